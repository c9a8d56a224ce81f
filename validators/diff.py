"""`diff`: tensor-level parity between two models through the pivot — names aligned to the HF names, quantized
tensors dequantized, every tensor compared in fp32 (max-abs, RMSE, cosine, SNR, bit-exact), a row block at a time."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from modelport.convert.dtypes import cast
from modelport.convert.pivot import load
from modelport.formats.errors import BadInput
from modelport.formats.model import TensorRef

SCHEMA = "modelport.diff/1"


@dataclass
class DiffReport:
    """The same fields as `modelport diff --json` (schema modelport.diff/1)."""

    schema: str
    a: str
    b: str
    summary: dict
    tensors: list[dict]
    only_in_a: list[str]
    only_in_b: list[str]

    def to_json(self) -> dict:
        return asdict(self)


BLOCK_BYTES = 16 << 20  # fp32 bytes per row block and side; the float64 temporaries are twice that


class _Errors:
    """Sums over row blocks for one tensor pair: |a|^2, |b|^2, a.b, |a-b|^2, max |a-b|, bit-exactness."""

    def __init__(self):
        self.aa = self.bb = self.ab = self.dd = self.max_abs = 0.0
        self.n, self.exact = 0, True

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        self.exact = self.exact and bool(np.array_equal(a, b))
        a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        d = a64 - b64
        self.aa += float(a64 @ a64)
        self.bb += float(b64 @ b64)
        self.ab += float(a64 @ b64)
        self.dd += float(d @ d)
        self.max_abs = max(self.max_abs, float(np.abs(d).max()) if d.size else 0.0)
        self.n += d.size

    def result(self) -> dict:
        """SNR is 10 log10(|a|^2 / |a-b|^2) dB; null when bit-exact (infinite) or when a is all zeros."""
        na, nb = math.sqrt(self.aa), math.sqrt(self.bb)
        return {"max_abs": self.max_abs, "rmse": math.sqrt(self.dd / max(1, self.n)),
                "cosine": self.ab / (na * nb) if na and nb else float(na == nb),
                "snr_db": None if self.dd == 0 else (10 * math.log10(self.aa / self.dd) if self.aa else None),
                "bit_exact": self.exact}


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Errors of b against a (arrays in memory), as `diff` computes them block by block."""
    e = _Errors()
    e.add(a, b)
    return e.result()


def _row_blocks(ref: TensorRef, rows: int) -> Iterator[np.ndarray]:
    """`ref` as fp32 blocks of `rows` rows: streamed when its transforms allow, else sliced from the whole tensor
    (whole-tensor transforms such as the Q/K permutation: one weight matrix, never the embedding)."""
    if ref.streams and ref.stored_shape and ref.n_rows == ref.shape[0]:
        yield from ref.chunks(rows * ref.row_bytes)
        return
    whole = ref.read().reshape(ref.shape)
    if not ref.shape:
        yield whole
        return
    for r in range(0, ref.shape[0], rows):
        yield whole[r:r + rows]


def compare_refs(a: TensorRef, b: TensorRef, name: str | None = None) -> dict:
    """Errors of b against a (the same shape), accumulated over row blocks: memory stays bounded by a block
    whatever the tensor's size, with no whole-tensor float64 copy."""
    a, b = cast(a, "F32", name), cast(b, "F32", name)
    rows = max(1, BLOCK_BYTES // (4 * max(1, a.n_elements // max(1, a.shape[0] if a.shape else 1))))
    e = _Errors()
    for x, y in zip(_row_blocks(a, rows), _row_blocks(b, rows), strict=True):
        e.add(x, y)
    return e.result()


def diff(a_path: str | Path, b_path: str | Path) -> DiffReport:
    a, b = load(a_path), load(b_path)
    rows = []
    for name, ra in a.tensors.items():
        rb = b.tensors.get(name)
        if rb is None:
            continue
        if tuple(ra.shape) != tuple(rb.shape):
            rows.append({"name": name, "shape": list(ra.shape), "shape_b": list(rb.shape), "dtype_a": ra.result_dtype,
                         "dtype_b": rb.result_dtype, "max_abs": None, "rmse": None, "cosine": None, "snr_db": None,
                         "bit_exact": False})
            continue
        rows.append({"name": name, "shape": list(ra.shape), "shape_b": list(rb.shape), "dtype_a": ra.result_dtype,
                     "dtype_b": rb.result_dtype, **compare_refs(ra, rb, name)})
    only_a = [n for n in a.tensors if n not in b.tensors]
    only_b = [n for n in b.tensors if n not in a.tensors]
    if not rows:
        raise BadInput(b_path, f"no tensor names in common with {a_path}")
    return DiffReport(SCHEMA, str(a_path), str(b_path), summarize(rows), rows, only_a, only_b)


def _key(r: dict) -> float:
    return -2.0 if r["cosine"] is None else r["cosine"]


def summarize(rows: list[dict]) -> dict:
    """Counts, the worst tensor by cosine (the one a conversion bug shows in first) and the lowest SNR."""
    snrs = [r["snr_db"] for r in rows if r["snr_db"] is not None]
    worst = min(rows, key=_key)
    return {"tensors": len(rows), "bit_exact": sum(r["bit_exact"] for r in rows),
            "shape_mismatches": [r["name"] for r in rows if r["shape"] != r["shape_b"]],
            "worst": worst["name"], "worst_cosine": worst["cosine"], "min_snr_db": min(snrs) if snrs else None,
            "max_abs": max((r["max_abs"] for r in rows if r["max_abs"] is not None), default=0.0)}
