"""`diff`: tensor-level parity between two models through the pivot — names aligned to the HF names, quantized
tensors dequantized, every tensor compared in fp32 (max-abs, RMSE, cosine, SNR, bit-exact)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modelport.convert.dtypes import cast
from modelport.convert.pivot import load
from modelport.formats.errors import BadInput

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


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Errors of b against a. SNR is 10 log10(|a|^2 / |a-b|^2) dB; null when bit-exact (infinite) or
    when a is all zeros."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    d = a64 - b64
    signal, noise = float(a64 @ a64), float(d @ d)
    na, nb = math.sqrt(signal), float(np.linalg.norm(b64))
    exact = bool(np.array_equal(a, b))
    return {"max_abs": float(np.abs(d).max()) if d.size else 0.0, "rmse": math.sqrt(noise / max(1, d.size)),
            "cosine": float(a64 @ b64 / (na * nb)) if na and nb else float(na == nb),
            "snr_db": None if noise == 0 else (10 * math.log10(signal / noise) if signal else None),
            "bit_exact": exact}


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
        x, y = cast(ra, "F32").read(), cast(rb, "F32").read()
        rows.append({"name": name, "shape": list(ra.shape), "shape_b": list(rb.shape), "dtype_a": ra.result_dtype,
                     "dtype_b": rb.result_dtype, **compare(x.reshape(ra.shape), y.reshape(rb.shape))})
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
