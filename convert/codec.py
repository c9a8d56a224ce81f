"""One `Codec` per format: everything format-specific hangs off it, and everything else (api.save / convert,
inspect, `modelport formats`, the CLI's --to choices and options, validate's choice of runtime) is derived from the
registry of codecs found through the `modelport.formats` entry-point group. Adding a format is one codec and one
entry-point line, in this package or in any other.

A codec spans the floors without breaking them: container I/O stays in `formats/<fmt>.py`, the mapping to and from
the pivot lives beside the codec in `convert/<fmt>/`, and the runtime that runs the format is named by `runtime` and
found in validators/ by that name."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar

from modelport.formats import inputs
from modelport.formats.errors import BadInput, ModelportError, Unsupported
from modelport.formats.hashing import Late
from modelport.formats.model import Model


@dataclass(frozen=True)
class Option:
    """A typed option a codec accepts when writing (`--NAME` on the command line, NAME= in the API)."""

    name: str  # python name; the flag is --name-with-dashes
    help: str
    choices: tuple[str, ...] = ()  # the values allowed (case as written here); () = any, checked by the codec
    type: type = str  # str, int, Path or bool (a flag)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any, codec: str) -> Any:
        """The value as the codec receives it; a value outside `choices` is bad usage (exit 2)."""
        if self.type is bool:
            return bool(value)
        if self.choices and str(value) not in self.choices:
            raise BadInput(None, f"{self.flag} {value}: {codec} takes {', '.join(self.choices)}")
        try:
            return self.type(value)
        except (TypeError, ValueError):
            raise BadInput(None, f"{self.flag} {value}: expected {self.type.__name__}") from None


@dataclass
class SaveContext:
    """What every write gets besides the model and the options: where, whether to overwrite, provenance."""

    dst: Path
    force: bool = False
    provenance: dict[str, str] = field(default_factory=dict)
    late: Late | None = None  # the source hashes, known only once the output has streamed
    progress: Callable[[int], None] | None = None


@dataclass
class Written:
    """What a codec reports of a write: tensors and bytes, the storage type, and notes (fallbacks, tensors that
    were transcoded rather than requantized), each {"name": ..., "fallback": ...}."""

    tensors: int
    bytes_written: int
    dtype: str | None
    notes: list[dict] = field(default_factory=list)
    provenance: dict[str, str] | None = None  # when the codec wrote its own (a whole-file quantizer)


class Codec:
    """A format. Subclasses set the class attributes and override what the format can do; a format that only
    reads leaves `save` alone, one without a runtime leaves `runtime` None."""

    name: ClassVar[str]
    description: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]] = ()  # a destination with one of these is written by this codec
    folder_output: ClassVar[bool] = False  # the codec for a destination without an extension (the HF folder)
    options: ClassVar[tuple[Option, ...]] = ()
    runtime: ClassVar[str | None] = None  # the validators runtime that runs this format ("llama.cpp", ...)
    other_runtimes: ClassVar[tuple[str, ...]] = ()  # runtimes validate --runtime may pick instead
    loggers: ClassVar[tuple[str, ...]] = ()  # library loggers whose notes the CLI keeps from its users

    def detect(self, path: Path) -> int:
        """0 if `path` is not this format; otherwise how specific the match is: the highest score wins, so an MLX
        or quantized-HF folder (a plain HF folder with more) outranks the plain HF folder."""
        return 0

    def open(self, path: Path) -> Any:
        """The format's native view, headers only."""
        raise NotImplementedError

    def to_pivot(self, native: Any, path: Path) -> Model:
        """The native view as the pivot (HF names and layouts, lazy tensors)."""
        raise NotImplementedError

    def resolve(self, options: dict[str, Any], dst: Path) -> dict[str, Any]:
        """Options as the write takes them: defaults filled and implications drawn (the codec may say so on
        stderr through the result's notes). Runs before anything is read or written."""
        return options

    def save(self, model: Model, options: dict[str, Any], ctx: SaveContext) -> Written:
        raise Unsupported(ctx.dst, f"modelport reads {self.name} but does not write it")

    def inspect(self, native: Any, path: Path) -> dict:
        """`modelport inspect`'s view: format, arch, files, parameters, dtypes, size, tensors, tokenizer, metadata."""
        raise NotImplementedError

    def storage_type(self, native: Any) -> str:
        """The storage type validate gates by (F32, F16, Q4_K_M, INT4 ...)."""
        return "F32"

    def parameters(self, native: Any, path: Path) -> int:
        """Parameters as the HF model counts them."""
        return sum(r.n_elements for r in self.to_pivot(native, path).tensors.values())

    def family_support(self, arch) -> dict | None:
        """What this format does with the family `arch` (convert.archs.Arch), for `modelport archs`: {"read",
        "write": bool, "via": who builds it or None, "quant": [types], "refused": [what: why]} plus anything the
        format names a family by; None if the format has nothing for it. A container of named tensors holds any
        family, hence the default."""
        return {"read": True, "write": True, "via": None, "quant": [], "refused": []}

    def families(self, native: Any) -> list:
        """The registered families (convert.archs.Arch) this model may be, for validate's encoder check."""
        return []

    def runnable(self, native: Any, path: Path) -> None:
        """Raise a ModelportError if the runtime cannot run this model as it lies (a file it needs is missing)."""

    def output_name(self, name: str, options: dict[str, Any]) -> str:
        """The file or folder name a build pipeline gives model `name` written with these (resolved) options, after
        the habits of the ecosystem that runs the format (llama.cpp's Name-Q4_K_M.gguf, ...)."""
        return f"{name}-{self.name}"

    def planned_bytes(self, model: Model, options: dict[str, Any]) -> int:
        """About how many bytes `save` writes for `model` with these (resolved) options, from headers only: a build
        pipeline's disk estimate. A codec that knows its storage types says so exactly."""
        return sum(r.nbytes for r in model.tensors.values())

    def targets(self) -> list[dict]:
        """The devices or execution providers `--target` picks among, with what each runs and where that fact comes
        from (`modelport targets`); [] for a format without targets."""
        return []

    def quantize_file(self, src: Path, dst: Path, quant: str, options: dict[str, Any], force: bool):
        """A format whose own quantizer works on a whole file (ONNX: onnxruntime's) overrides this; others are
        quantized by converting to themselves with --quant."""
        return None


@cache
def registry() -> dict[str, Codec]:
    """The codecs of every installed package, ours included, by name."""
    codecs: dict[str, Codec] = {}
    for ep in entry_points(group="modelport.formats"):
        codec = ep.load()
        codecs[codec.name] = codec
    return codecs


def get(name: str) -> Codec:
    codecs = registry()
    if name not in codecs:
        close = difflib.get_close_matches(name, list(codecs), n=1)
        raise Unsupported(None, f"unknown format {name!r}" + (f" (did you mean {close[0]}?)" if close else "")
                          + f"; known: {', '.join(codecs)}")
    return codecs[name]


def detect(path: Path) -> Codec:
    """The codec of an existing input: every codec scores it, the most specific match wins."""
    inputs.check_top(path)  # a FIFO or device is refused before any codec opens it
    best, score = None, 0
    for codec in registry().values():
        try:
            s = codec.detect(path)
        except OSError as e:
            raise BadInput(path, f"cannot read: {e.strerror}") from None
        if s > score:
            best, score = codec, s
    if best:
        return best
    if path.is_dir():
        raise BadInput(path, "no model here: expected config.json and model*.safetensors, or a .gguf")
    raise BadInput(path, f"not a model file modelport reads ({', '.join(registry())})")


def for_output(path: Path, to: str | None) -> Codec:
    """The codec to write with: `--to` when given, else the destination's extension, else the folder codec."""
    if to:
        return get(to)
    for codec in registry().values():
        if path.suffix in codec.extensions:
            return codec
    if path.suffix:
        raise Unsupported(path, f"unknown output extension {path.suffix!r}; pass --to")
    return next(c for c in registry().values() if c.folder_output)


def parse_options(codec: Codec, given: dict[str, Any], dst: Path) -> dict[str, Any]:
    """The given options (None or False = not given) parsed by the codec's declarations; one it does not declare
    is bad usage (exit 2) naming the options it has."""
    declared = {o.name: o for o in codec.options}
    unknown = [k for k, v in given.items() if v not in (None, False) and k not in declared]
    if unknown:
        flags = ", ".join(o.flag for o in codec.options) or "none"
        raise BadInput(dst, f"{', '.join('--' + k.replace('_', '-') for k in unknown)}: {codec.name} output takes "
                            f"no such option (its options: {flags})")
    try:
        return {k: declared[k].parse(v, codec.name) for k, v in given.items() if v not in (None, False)}
    except ModelportError as e:
        raise type(e)(dst, e.problem) from None


def check_options(codec: Codec, given: dict[str, Any], dst: Path) -> dict[str, Any]:
    """The given options parsed, then resolved by the codec (defaults filled, implications drawn)."""
    return codec.resolve(parse_options(codec, given, dst), dst)


def all_options() -> dict[str, list[tuple[Codec, Option]]]:
    """Every option any codec declares, by name, with the codecs that take it (the CLI builds its flags here)."""
    out: dict[str, list[tuple[Codec, Option]]] = {}
    for codec in registry().values():
        for opt in codec.options:
            out.setdefault(opt.name, []).append((codec, opt))
    return out
