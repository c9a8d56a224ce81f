"""The public Python API: load any supported model into the pivot, save the pivot in any format, convert. Every
format-specific step is the codec's (convert.codec): this module only wires them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from modelport.convert import codec as codecs
from modelport.convert import pivot, provenance
from modelport.formats.atomic import protecting
from modelport.formats.hashing import Late, SourceHashes
from modelport.formats.model import Model

from . import hub

VERSION = provenance.VERSION


def load(path: str | Path) -> Model:
    """Any supported model (HF folder, .safetensors, .gguf, .onnx, or a plugin's format, or a hub id
    org/name[@revision] through the hub cache) as the pivot; reads headers only."""
    return pivot.load(hub.local(path))


@dataclass
class Result:
    src: str
    dst: str
    source_format: str
    target_format: str
    dtype: str | None
    tensors: int
    bytes_written: int
    provenance: dict = field(default_factory=dict)
    fallbacks: list = field(default_factory=list)  # tensors whose type fell back or were transcoded, and why


def save(model: Model, dst: str | Path, to: str | None = None, force: bool = False,
         provenance_keys: dict[str, str] | None = None, hashes: SourceHashes | None = None,
         progress: Callable[[int], None] | None = None, **options: Any) -> Result:
    """Write the pivot as `to` (default: by DST's extension, else an HF folder), atomically. `options` are the
    codec's (`modelport formats` lists them: dtype, quant, imatrix, ops, block_size ...); one it does not take is
    refused (exit 2) naming the ones it does."""
    dst = Path(dst)
    codec = codecs.for_output(dst, to)
    return _write(model, codec, dst, codecs.parse_options(codec, options, dst), force, provenance_keys, hashes,
                  progress)


def _write(model: Model, codec: codecs.Codec, dst: Path, given: dict[str, Any], force: bool,
           provenance_keys: dict[str, str] | None, hashes: SourceHashes | None,
           progress: Callable[[int], None] | None) -> Result:
    """The write itself, from options already parsed: the codec resolves them, then saves."""
    opts = codec.resolve(given, dst)
    prov = {provenance.VERSION_KEY: VERSION, **(provenance_keys or {})}
    late = Late(provenance.HASHES, hashes.placeholder, hashes.text) if hashes else None
    done = codec.save(model, opts, codecs.SaveContext(dst, force, prov, late, progress))
    return Result("", str(dst), model.metadata.get("format", ""), codec.name, done.dtype, done.tensors,
                  done.bytes_written, prov, done.notes)


def convert(src: str | Path, dst: str | Path, to: str | None = None, force: bool = False,
            progress: Callable[[int], None] | None = None, **options: Any) -> Result:
    """SRC -> DST through the pivot, streaming, with provenance (tool version, source format and sha256s, options).
    Options are checked before the source is read."""
    dst = Path(dst)
    codec = codecs.for_output(dst, to)
    given = codecs.parse_options(codec, options, dst)  # bad options fail before any reading
    model = load(src)
    prov = provenance.record(model.metadata["format"], {"to": to, **given}) | model.metadata.get("provenance", {})
    with protecting([src, *model.metadata["source_files"]]):  # --force never replaces what is being read
        result = _write(model, codec, dst, given, force, prov, SourceHashes(model.metadata["source_files"]),
                        progress)
    result.src = str(src)
    return result


def quantize(src: str | Path, dst: str | Path, quant: str, to: str | None = None, force: bool = False,
             progress: Callable[[int], None] | None = None, **options: Any) -> Result:
    """SRC quantized into DST. A format with a whole-file quantizer of its own (ONNX: onnxruntime's) uses it;
    any other source converts to `to` (default: DST's format by its extension) with --quant."""
    src, dst = hub.local(src), Path(dst)
    codec = codecs.detect(src)
    with protecting([src]):
        done = None if to else codec.quantize_file(src, dst, quant, options, force)
    if done is None:
        return convert(src, dst, to, force, progress, quant=quant, **options)
    return Result(str(src), str(dst), codec.name, codec.name, done.dtype, done.tensors, done.bytes_written,
                  done.provenance or {}, done.notes)


def validate(ref: str | Path, cand: str | Path, texts: dict[str, str] | None = None, max_kl: float | None = None,
             min_top1: float | None = None, max_ppl_ratio: float | None = None,
             provider: str = "CPUExecutionProvider", save_reference: str | Path | None = None, force: bool = False,
             stream: bool | None = None, progress: Callable[[str], None] | None = None, runtime: str | None = None):
    """REF (reference, fp32) vs CAND on their own runtimes over the same token ids -> validators.parity.Report
    (the fields of `modelport validate --json`); `texts` name -> text, default the built-in ones; an ONNX side
    runs in onnxruntime on the execution provider `provider`. The sides run in turn; REF may be a saved reference
    (.mpref), and `save_reference` saves this one; `stream` runs a safetensors reference from its checkpoint module
    by module (None: when holding it would not fit); `progress` gets a line per side and text; `runtime` runs CAND
    in another runtime its format lists (ONNX: openvino)."""
    from modelport.validators.parity import validate as run

    return run(hub.local(ref), hub.local(cand) if cand is not None else None, texts, max_kl, min_top1, max_ppl_ratio, provider=provider, save_reference=save_reference,
               force=force, stream=stream, progress=progress, runtime=runtime)


def save_reference(ref: str | Path, dst: str | Path, texts: dict[str, str] | None = None, force: bool = False,
                   stream: bool | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Run REF once and save its token ids and logits to DST (.mpref) for `validate(DST, cand)` later."""
    from modelport.validators.parity import save_reference as run

    return run(hub.local(ref), dst, texts, force=force, stream=stream, progress=progress)
