"""ggml's own quantizers, called through ctypes in the libggml that llama-cpp-python installs, so a tensor
quantized here is byte-identical to one quantized by llama-quantize. Row blocks run on all cores: ctypes releases
the GIL, and rows quantize independently (llama.cpp splits them across threads the same way)."""
from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from modelport.formats.errors import RuntimeMissing

ROWS_PER_TASK = 32  # llama.cpp's chunk_size_multiplier x 512 elements per row at typical widths


@cache
def lib() -> ctypes.CDLL:
    """libggml-base from the llama_cpp package (found without importing llama_cpp's own loader)."""
    try:
        import llama_cpp
    except ImportError:
        raise RuntimeMissing(None, "quantization needs ggml from llama-cpp-python: pip install 'modelport[llama]'") \
            from None
    folder = Path(llama_cpp.__file__).parent / "lib"
    names = sorted(folder.glob("libggml-base.*"), key=lambda p: len(p.name)) or sorted(folder.glob("*ggml-base*"))
    if not names:
        raise RuntimeMissing(folder, "libggml-base is missing from the llama_cpp package")
    so = ctypes.CDLL(str(names[0]))
    so.ggml_quantize_chunk.restype = ctypes.c_size_t
    so.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                       ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    so.ggml_quantize_init.argtypes = [ctypes.c_int]
    so.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    so.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    so.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    so.ggml_row_size.restype = ctypes.c_size_t
    return so


def requires_imatrix(qtype: GGMLQuantizationType) -> bool:
    return bool(lib().ggml_quantize_requires_imatrix(int(qtype)))


def row_bytes(qtype: GGMLQuantizationType, n_per_row: int) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return n_per_row // block * size


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ggml-quantize")


def quantize_rows(rows: np.ndarray, qtype: GGMLQuantizationType, imatrix: np.ndarray | None = None) -> np.ndarray:
    """f32 rows (n, n_per_row) -> (n, row_bytes) uint8 blocks of `qtype`; `imatrix` (n_per_row,) importance
    weights, which some types require."""
    so = lib()
    src = np.ascontiguousarray(rows, dtype=np.float32)
    n, n_per_row = src.shape
    width = row_bytes(qtype, n_per_row)
    out = np.empty((n, width), dtype=np.uint8)
    so.ggml_quantize_init(int(qtype))
    imp = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    imp_ptr = None if imp is None else imp.ctypes.data

    def run(first: int) -> None:
        count = min(ROWS_PER_TASK, n - first)
        so.ggml_quantize_chunk(int(qtype), src.ctypes.data + first * n_per_row * 4, out.ctypes.data + first * width,
                               0, count, n_per_row, imp_ptr)

    list(_pool().map(run, range(0, n, ROWS_PER_TASK)))
    return out
