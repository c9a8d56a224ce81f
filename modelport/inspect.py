"""`modelport inspect`: what a model file holds, in its own names, as one JSON-able dict."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from modelport.convert import archs
from modelport.formats import gguf, registry, safetensors
from modelport.formats.errors import Unsupported

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


def _safetensors(path: Path) -> dict:
    m = safetensors.read(path)
    rows, params, dtypes = _tensors(list(m.tensors.items()))
    tok = {"files": sorted(m.tokenizer)}
    if "tokenizer.json" in m.tokenizer:
        tj = json.loads(m.tokenizer["tokenizer.json"])
        tok.update(model=tj["model"]["type"], tokens=len(tj["model"].get("vocab", {})) + len(tj.get("added_tokens", [])))
    meta = {"config": m.config, **({"safetensors": m.metadata["safetensors_metadata"]}
                                   if m.metadata["safetensors_metadata"] else {})}
    return {"format": "safetensors", "arch": m.arch, "files": len(m.metadata["source_files"]), "parameters": params,
            "dtypes": dtypes, "size": _sizes(rows, params), "tensors": rows, "tokenizer": tok, "metadata": meta}


READERS = {"gguf": _gguf, "safetensors": _safetensors}


def inspect(path: str | Path) -> dict:
    path = Path(path)
    return {"path": str(path), **READERS[registry.detect(path).name](path)}
