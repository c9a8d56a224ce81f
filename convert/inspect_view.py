"""The pieces every codec's `inspect` view shares: tensor rows, sizes by storage type, the HF tokenizer summary."""
from __future__ import annotations

from collections import Counter

from modelport.formats import jsonfile
from modelport.formats.errors import BadInput

BIG_ARRAY = 16  # metadata arrays longer than this are summarised


def short(value):
    if isinstance(value, list) and len(value) > BIG_ARRAY:
        return f"[{len(value)} items]"
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "..."
    return value


def tensors(items) -> tuple[list[dict], int, dict]:
    """Rows (name, shape, dtype, bytes, bits per weight), the parameter count, and tensors per dtype."""
    rows = [{"name": n, "shape": list(r.shape), "dtype": r.dtype, "bytes": r.nbytes,
             "bpw": round(8 * r.nbytes / max(1, r.n_elements), 4)} for n, r in items]
    params = sum(r.n_elements for _, r in items)
    return rows, params, dict(Counter(r["dtype"] for r in rows))


def sizes(rows: list[dict], params: int) -> dict:
    """Bytes per storage type and the whole file's bits per weight (tensor data only)."""
    by_type: Counter = Counter()
    for r in rows:
        by_type[r["dtype"]] += r["bytes"]
    total = sum(by_type.values())
    return {"tensor_bytes": total, "bits_per_weight": round(8 * total / max(1, params), 4),
            "bytes_by_type": dict(by_type.most_common())}


def view(fmt: str, arch: str, files: int, items, tokenizer: dict, metadata: dict, params: int | None = None,
         **more) -> dict:
    """One inspect dict in the shape `modelport inspect --json` documents."""
    rows, counted, dtypes = tensors(items)
    params = counted if params is None else params
    return {"format": fmt, "arch": arch, **more, "files": files, "parameters": params, "dtypes": dtypes,
            "size": sizes(rows, params), "tensors": rows, "tokenizer": tokenizer, "metadata": metadata}


def hf_tokenizer(files: dict[str, bytes]) -> dict:
    tok: dict = {"files": sorted(files)}
    if "tokenizer.json" in files:
        tj = jsonfile.loads(files["tokenizer.json"], "tokenizer.json")
        model = tj.get("model") if isinstance(tj, dict) else None
        vocab = model.get("vocab") or {} if isinstance(model, dict) else None
        added = tj.get("added_tokens") or [] if isinstance(tj, dict) else None
        if not isinstance(model, dict) or not isinstance(vocab, (dict, list)) or not isinstance(added, list):
            raise BadInput("tokenizer.json", "expected a model object with a vocab, and a list of added_tokens")
        tok.update(model=model.get("type"), tokens=len(vocab) + len(added))
    return tok
