"""MLX model folders as mlx-lm reads and writes them: Hugging Face folders (config.json, safetensors shards with an
index, tokenizer files) whose quantized layers hold MLX's affine quantization, `X.weight` (U32 words packing
`bits`-bit values, first value in the lowest bits), `X.scales` and `X.biases` (one per `group_size` values: w =
scale * q + bias), described by config.json's `quantization` section (`group_size`, `bits`, `mode`, and per-layer
entries `{"group_size", "bits"}` keyed by module path for mixed recipes). The container is the safetensors one, read
and written by formats.safetensors; here the quantization section is checked against the tensors before anything
is read. No architecture knowledge here."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import jsonfile, safetensors
from .errors import BadInput, Unsupported
from .hashing import Late
from .model import Model, TensorRef

QUANT_KEY = "quantization"  # mlx-lm also writes it as "quantization_config", for tools that read HF's name
QUANT_PARTS = ("scales", "biases")
MODES = ("affine",)  # mlx's mxfp4 / nvfp4 modes are not read here
BITS = (2, 3, 4, 5, 6, 8)
METADATA = {"format": "mlx"}  # what mlx_lm.save_model puts in each shard's __metadata__


@dataclass
class MlxContents:
    """An MLX folder's tensors (native, MLX names), config and quantization: module path -> (bits, group size)."""

    model: Model
    quantized: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        return self.model.metadata["source_files"]

    @property
    def tensors(self) -> dict[str, TensorRef]:
        """The tensors as stored, as every native view has them (validate sizes memory by them)."""
        return self.model.tensors


def _config(path: Path) -> dict | None:
    try:  # bounded and checked as every config is; a bad one is not MLX's to refuse, the HF folder's reader says why
        cfg = jsonfile.loads((path / "config.json").read_bytes(), path / "config.json")
    except (OSError, BadInput):
        return None
    return cfg if isinstance(cfg, dict) else None


def sniff(path: Path) -> bool:
    """An HF folder that says it is MLX-quantized (config `quantization`) or holds MLX scales/biases or mlx-lm's
    stacked experts (`switch_mlp`); headers only."""
    if not (path.is_dir() and safetensors.sniff(path)):
        return False
    cfg = _config(path)
    if cfg is not None and QUANT_KEY in cfg:
        return True
    try:
        files = safetensors.shard_files(path)
        names = [n for f in files for n in safetensors.read_header(f)[0]]
    except BadInput:
        return False
    return any(n.endswith(tuple("." + p for p in QUANT_PARTS)) or ".switch_mlp." in n for n in names)


def _params(section: dict, module: str, path: Path) -> tuple[int, int] | None:
    """(bits, group size) for `module`: its own entry if the section has one, else the section's."""
    entry = section.get(module, section)
    if entry is False:
        return None
    if not isinstance(entry, dict):
        raise BadInput(path, f"config.json quantization entry for {module!r} is not an object")
    bits, group = entry.get("bits"), entry.get("group_size")
    if bits not in BITS or not isinstance(group, int) or group <= 0:
        raise BadInput(path, f"config.json quantization for {module!r}: bits {bits!r}, group_size {group!r} "
                             f"(bits {', '.join(map(str, BITS))}; a positive group size)")
    return bits, group


def check(tensors: dict[str, TensorRef], section: dict | None, path: Path) -> dict[str, tuple[int, int]]:
    """Every quantized module's (bits, group size), after checking the config's section against the tensors:
    packed weights with their scales and biases, shapes that agree with bits and group size."""
    modules = sorted({n.rsplit(".", 1)[0] for n in tensors if n.endswith(".scales")}
                     | {n.rsplit(".", 1)[0] for n, r in tensors.items() if n.endswith(".weight") and r.dtype == "U32"})
    if modules and section is None:
        raise BadInput(path, f"{modules[0]} is MLX-quantized but config.json has no quantization section")
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise BadInput(path, "config.json quantization is not an object")
    if section.get("mode", "affine") not in MODES:
        raise Unsupported(path, f"quantization mode {section['mode']!r}: modelport reads {', '.join(MODES)}")
    out = {}
    for m in modules:
        params = _params(section, m, path)
        parts = {p: tensors.get(f"{m}.{p}") for p in ("weight",) + QUANT_PARTS}
        missing = [p for p, r in parts.items() if r is None]
        if missing or params is None:
            raise BadInput(path, f"{m}: quantized but {f'{m}.{missing[0]}' if missing else 'its config entry'} "
                                 f"{'is missing' if missing else 'says it is not'}")
        bits, group = params
        w, s, b = parts["weight"], parts["scales"], parts["biases"]
        if w.dtype != "U32" or s.shape != b.shape or w.shape[:-1] != s.shape[:-1]:
            raise BadInput(path, f"{m}: weight {w.dtype} {list(w.shape)}, scales {list(s.shape)}, biases "
                                 f"{list(b.shape)} are not an MLX quantized layer")
        if w.shape[-1] * 32 != s.shape[-1] * group * bits:
            raise BadInput(path, f"{m}: {w.shape[-1]} words per row hold {w.shape[-1] * 32 // bits} {bits}-bit values, "
                                 f"not {s.shape[-1]} groups of {group} as config.json says (bits or group_size wrong?)")
        out[m] = (bits, group)
    return out


def read(path: Path) -> MlxContents:
    model = safetensors.read(path)
    model.metadata["format"] = "mlx"
    return MlxContents(model, check(model.tensors, model.config.get(QUANT_KEY), path))


def write(dst: Path, model: Model, meta: dict[str, str], late: Late | None = None, progress=None) -> None:
    """The folder as mlx_lm.save writes it: shards with an index (always), config, tokenizer files."""
    safetensors.write(dst, model, {**METADATA, **meta}, late=late, progress=progress, index=True)
