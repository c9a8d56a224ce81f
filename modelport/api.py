"""The public Python API: load any supported model into the pivot, save the pivot in any format, convert."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from modelport.convert import gguf_map, onnx_genai, onnx_graph, pivot, quantize
from modelport.convert import imatrix as imatrix_file
from modelport.convert import onnx_optimum, onnx_quantize
from modelport.convert.dtypes import parse as parse_dtype
from modelport.formats import onnx as onnx_format
from modelport.formats import registry
from modelport.formats.atomic import atomic_output
from modelport.formats.errors import BadInput, Unsupported
from modelport.formats.hashing import Late, SourceHashes
from modelport.formats.model import Model

from importlib.metadata import version as _version

VERSION = _version("modelport")
HASHES_KEY = "modelport.source.sha256"
ARCH_KEY = "modelport.arch"


def load(path: str | Path) -> Model:
    """Any supported model (HF folder, .safetensors, .gguf, .onnx) as the pivot; reads headers only."""
    return pivot.load(path)


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
    fallbacks: list = field(default_factory=list)  # tensors whose quant type fell back, and why


def save(model: Model, dst: str | Path, to: str | None = None, dtype: str | None = None, force: bool = False,
         quant: str | None = None, imatrix: str | Path | None = None, provenance: dict[str, str] | None = None,
         hashes: SourceHashes | None = None, progress: Callable[[int], None] | None = None, ops: str | None = None,
         block_size: int | None = None) -> Result:
    """Write the pivot as `to` (default: by DST's extension, else an HF folder), atomically; `quant` is a
    llama.cpp preset (Q4_K_M, ...) for GGUF output, with an optional importance matrix file, or int4 / int8 for
    ONNX (`ops` "ort", MatMulNBits blocks of `block_size`)."""
    dst = Path(dst)
    fmt = registry.for_output(dst, to)
    dtype = parse_dtype(dtype)
    if imatrix and not (quant and fmt.name == "gguf"):
        raise Unsupported(dst, "--imatrix guides a GGUF quantization: pass --quant and write a .gguf")
    prov = {"modelport.version": VERSION, **(provenance or {})}
    late = Late(HASHES_KEY, hashes.placeholder, hashes.text) if hashes else None
    if fmt.name == "onnx":
        return _save_onnx(model, dst, dtype, ops or "portable", quant, block_size or 32, force, prov, late, progress)
    if ops or block_size:
        raise Unsupported(dst, f"--ops and --block-size shape ONNX output; {fmt.name} has no use for them")
    quant = quantize.preset(quant) if quant else None
    if quant and fmt.name != "gguf":
        raise Unsupported(dst, f"--quant {quant} is a GGUF quantization; write a .gguf or pass --to gguf")
    matrix = imatrix_file.load(imatrix) if imatrix else None
    if fmt.name == "gguf":
        arch, kv, tensors, choices = gguf_map.to_gguf(model, dtype, prov, dst, quant, matrix)
        total = sum(r.nbytes for _, r in tensors)
        with atomic_output(dst, force) as partial:
            fmt.write(partial, arch, kv, tensors, late=late, progress=progress)
    else:
        out = gguf_map.to_hf(model, dtype)
        tensors = list(out.tensors.items())
        total = sum(r.nbytes for _, r in tensors)
        with atomic_output(dst, force) as partial:
            fmt.write(partial, out, prov, late=late, bare=dst.suffix == ".safetensors", progress=progress)
        choices = []
    return Result("", str(dst), model.metadata.get("format", ""), fmt.name, quant or dtype, len(tensors), total, prov,
                  [c for c in choices if c["fallback"]])


def _save_onnx(model: Model, dst: Path, dtype: str | None, ops: str, quant: str | None, block_size: int,
               force: bool, prov: dict[str, str], late: Late | None, progress) -> Result:
    """DST a folder (model.onnx, model.onnx.data, genai_config.json, tokenizer, config.json) or `x.onnx` with
    `x.onnx.data` beside it; both files appear whole or not at all."""
    if model.arch not in onnx_graph.FAMILIES:
        return _save_onnx_optimum(model, dst, dtype, quant, force, prov, late)
    graph = onnx_graph.build(model, dtype, ops, quant, block_size)
    meta = {ARCH_KEY: model.arch, gguf_map.CONFIG_KEY: json.dumps(model.config, sort_keys=True), **prov}
    total = sum(r.nbytes for _, r in graph.weights)
    onnx_format.place(dst, force, lambda m, d, loc: onnx_format.write(m, d, loc, graph.proto, graph.weights, meta,
                                                                      late, progress),
                      lambda: onnx_genai.folder_files(model, onnx_format.MODEL_FILE))
    return Result("", str(dst), model.metadata.get("format", ""), "onnx", quant or graph.dtype, len(graph.weights),
                  total, prov, graph.notes)


def _save_onnx_optimum(model: Model, dst: Path, dtype: str | None, quant: str | None, force: bool,
                       prov: dict[str, str], late: Late | None) -> Result:
    """No graph builder here for this architecture: optimum's exporter writes the folder, and the result says so."""
    onnx_optimum.check(model.arch, model.config, dst)  # a family optimum cannot export is named as such first
    if quant:
        raise Unsupported(dst, f"--quant {quant}: {model.arch} goes to ONNX through optimum, which exports f32; "
                               "quantize its output with `modelport quantize`")
    done = onnx_optimum.export(model, dst, dtype, force, prov, late)
    return Result("", str(dst), model.metadata.get("format", ""), "onnx", "F32", len(model.tensors),
                  done.bytes_written, prov, [{"name": dst.name, "fallback": done.note}])


def convert(src: str | Path, dst: str | Path, to: str | None = None, dtype: str | None = None, force: bool = False,
            quant: str | None = None, imatrix: str | Path | None = None,
            progress: Callable[[int], None] | None = None, ops: str | None = None,
            block_size: int | None = None) -> Result:
    """SRC -> DST through the pivot, streaming, with provenance (tool version, source format and sha256s, options)."""
    model = load(src)
    options = {"to": to, "dtype": dtype, "quant": quant, "imatrix": Path(imatrix).name if imatrix else None,
               "ops": ops, "block_size": block_size}
    prov = {"modelport.source.format": model.metadata["format"],
            "modelport.options": json.dumps({k: v for k, v in options.items() if v is not None}, sort_keys=True)}
    result = save(model, dst, to, dtype, force, quant, imatrix, prov, SourceHashes(model.metadata["source_files"]),
                  progress, ops, block_size)
    result.src = str(src)
    return result


def validate(ref: str | Path, cand: str | Path, texts: dict[str, str] | None = None, max_kl: float | None = None,
             min_top1: float | None = None, max_ppl_ratio: float | None = None,
             provider: str = "CPUExecutionProvider"):
    """REF (reference, fp32) vs CAND on their own runtimes over the same token ids -> validators.parity.Report
    (the fields of `modelport validate --json`); `texts` name -> text, default the built-in ones; an ONNX side
    runs in onnxruntime on the execution provider `provider`."""
    from modelport.validators.parity import validate as run

    return run(ref, cand, texts, max_kl, min_top1, max_ppl_ratio, provider=provider)


def quantize_onnx(src: str | Path, dst: str | Path, quant: str, block_size: int = 32, force: bool = False) -> Result:
    """An existing ONNX model (ours or anyone's) quantized by onnxruntime's quantizers (convert.onnx_quantize: int4 /
    int8 MatMulNBits, fp16). SRC a .onnx gives DST.onnx with DST.onnx.data beside it, both whole or neither; SRC a
    model folder (model.onnx, genai_config.json, tokenizer ...) gives the folder DST with the other files copied, so
    onnxruntime-genai loads it as it loaded SRC. onnxruntime's quantizers work on the whole model in memory, so
    unlike `convert` this holds the model (and its quantized copy) in RAM."""
    src, dst = Path(src), Path(dst)
    folder = src.is_dir()
    if (dst.suffix == ".onnx") == folder:
        raise BadInput(dst, "a model folder quantizes into a folder, a .onnx file into a .onnx file")
    contents = onnx_format.read(src)  # a valid graph whose external data stays in its folder
    hashes = SourceHashes(contents.files)
    proto = onnx_quantize.quantize(contents.path, quant, block_size)
    tensors = onnx_quantize.detach_weights(proto)
    prov = {"modelport.version": VERSION, "modelport.source.format": "onnx",
            "modelport.options": json.dumps({"quant": quant, "block_size": block_size}, sort_keys=True)}
    late = Late(HASHES_KEY, hashes.placeholder, hashes.text)

    def write(model: Path, data: Path, location: str) -> None:
        onnx_format.write(model, data, location, proto, tensors, {**contents.metadata, **prov}, late)

    model_files = {f.resolve() for f in contents.files}
    onnx_format.place(dst, force, write, lambda: {f.name: f.read_bytes() for f in sorted(src.iterdir())
                                                  if f.is_file() and f.resolve() not in model_files})
    return Result(str(src), str(dst), "onnx", "onnx", quant, len(tensors), sum(r.nbytes for _, r in tensors), prov)
