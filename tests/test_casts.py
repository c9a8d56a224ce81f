"""Float casts (convert/dtypes.py) take ggml's SIMD conversions where llama-cpp-python is installed: they round as
numpy and ml_dtypes do, bit for bit, on every kind of value a checkpoint can hold."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from modelport.convert import dtypes, ggml

EDGES = np.array([0.0, -0.0, np.inf, -np.inf, 65504, 65519.99, 65520, -65520, 6e-8, 2.9e-8, 3e-8, 5.96e-8,
                  1e-40, -1e-45, 3.4e38], dtype=np.float32)


def _values() -> np.ndarray:
    rng = np.random.default_rng(0)
    scales = (1e-9, 1e-6, 1e-3, 1, 1e3, 7e4, 1e8)
    normal = np.concatenate([rng.standard_normal(200_000).astype(np.float32) * s for s in scales])
    bits = rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)  # any pattern
    values = np.concatenate([normal, bits[np.isfinite(bits)], EDGES])  # NaN payloads aside
    return values[: len(values) // 100 * 100].reshape(-1, 100)


@pytest.mark.parametrize("src,dst", [("BF16", "F16"), ("F32", "F16"), ("BF16", "F32"), ("F16", "F32")])
def test_ggml_casts_equal_ml_dtypes_bit_for_bit(src, dst):
    if not ggml.casts(src, dst):
        pytest.skip("llama-cpp-python's ggml is not installed")
    f32 = _values()
    with np.errstate(over="ignore"):
        arr = {"F32": f32, "BF16": (f32.view(np.uint32) >> 16).astype(np.uint16), "F16": f32.astype(np.float16)}[src]
        view = arr.view(ml_dtypes.bfloat16) if src == "BF16" else arr
        want = view.astype(dtypes.NUMPY_FLOATS[dst])
    got = ggml.cast(arr, src, dst)
    assert got.shape == arr.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_casts_ggml_does_not_round_as_we_do_stay_with_ml_dtypes():
    assert not ggml.casts("F32", "BF16") and not ggml.casts("F16", "BF16") and not ggml.casts("F16", "F16")
