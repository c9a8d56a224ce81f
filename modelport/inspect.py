"""`modelport inspect`: what a model file holds, in its own names, as one JSON-able dict."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from modelport.convert import archs, onnx_import
from modelport.formats import gguf, registry, safetensors
from modelport.formats import onnx as onnx_format
from modelport.formats.errors import ModelportError, Unsupported

BIG_ARRAY = 16  # metadata arrays longer than this are summarised


def _short(value):
    if isinstance(value, list) and len(value) > BIG_ARRAY:
        return f"[{len(value)} items]"
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "..."
    return value


def _tensors(items) -> tuple[list[dict], int, dict]:
    rows = [{"name": n, "shape": list(r.shape), "dtype": r.dtype, "bytes": r.nbytes,
             "bpw": round(8 * r.nbytes / max(1, r.n_elements), 4)} for n, r in items]
    params = sum(r.n_elements for _, r in items)
    return rows, params, dict(Counter(r["dtype"] for r in rows))


def _sizes(rows: list[dict], params: int) -> dict:
    """Bytes per storage type and the whole file's bits per weight (tensor data only)."""
    by_type: Counter = Counter()
    for r in rows:
        by_type[r["dtype"]] += r["bytes"]
    total = sum(by_type.values())
    return {"tensor_bytes": total, "bits_per_weight": round(8 * total / max(1, params), 4),
            "bytes_by_type": dict(by_type.most_common())}


def _gguf(path: Path) -> dict:
    c = gguf.read(path)
    rows, params, dtypes = _tensors(list(c.tensors.items()))
    kv = {k: v for k, (v, _, _) in c.kv.items()}
    try:
        arch = archs.for_gguf(kv.get("general.architecture", ""), path=path).name
    except Unsupported as e:
        arch = f"unsupported ({e.problem})"
    tok = {"model": kv.get("tokenizer.ggml.model"), "pre": kv.get("tokenizer.ggml.pre"),
           "tokens": len(kv.get("tokenizer.ggml.tokens") or []), "bos_id": kv.get("tokenizer.ggml.bos_token_id"),
           "eos_id": kv.get("tokenizer.ggml.eos_token_id")}
    meta = {k: _short(v) for k, v in kv.items() if not k.startswith("tokenizer.ggml.")}
    return {"format": "gguf", "arch": arch, "gguf_arch": kv.get("general.architecture"), "files": len(c.files),
            "parameters": params, "dtypes": dtypes, "size": _sizes(rows, params), "tensors": rows, "tokenizer": tok,
            "metadata": meta}


def _hf_tokenizer(files: dict[str, bytes]) -> dict:
    tok: dict = {"files": sorted(files)}
    if "tokenizer.json" in files:
        tj = json.loads(files["tokenizer.json"])
        tok.update(model=tj["model"]["type"],
                   tokens=len(tj["model"].get("vocab", {})) + len(tj.get("added_tokens", [])))
    return tok


def _safetensors(path: Path) -> dict:
    m = safetensors.read(path)
    rows, params, dtypes = _tensors(list(m.tensors.items()))
    tok = _hf_tokenizer(m.tokenizer)
    meta = {"config": m.config, **({"safetensors": m.metadata["safetensors_metadata"]}
                                   if m.metadata["safetensors_metadata"] else {})}
    return {"format": "safetensors", "arch": m.arch, "files": len(m.metadata["source_files"]), "parameters": params,
            "dtypes": dtypes, "size": _sizes(rows, params), "tensors": rows, "tokenizer": tok, "metadata": meta}


def _onnx(path: Path) -> dict:
    """The initializers as stored (MatMulNBits blobs included); parameters as the HF model counts them when the
    graph reads back into the pivot."""
    c = onnx_format.read(path)
    rows, params, dtypes = _tensors(list(c.tensors.items()))
    meta = {k: _short(v) for k, v in c.metadata.items()}
    try:
        model = onnx_import.from_onnx(c, path)
        arch, tok = model.arch, _hf_tokenizer(model.tokenizer)
        params = sum(r.n_elements for r in model.tensors.values())
    except ModelportError as e:  # still a model to describe: say why it does not read back
        arch, tok, meta["read_back"] = "unknown", {}, e.problem
    meta["operators"] = dict(Counter(n.op_type for n in c.proto.graph.node).most_common())
    meta["opsets"] = {o.domain or "ai.onnx": o.version for o in c.proto.opset_import}
    return {"format": "onnx", "arch": arch, "files": len(c.files), "parameters": params, "dtypes": dtypes,
            "size": _sizes(rows, params), "tensors": rows, "tokenizer": tok, "metadata": meta}


READERS = {"gguf": _gguf, "safetensors": _safetensors, "onnx": _onnx}


def inspect(path: str | Path) -> dict:
    path = Path(path)
    return {"path": str(path), **READERS[registry.detect(path).name](path)}
