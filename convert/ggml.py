"""ggml's own quantizers and float conversions, called through ctypes in the libggml that llama-cpp-python installs,
so a tensor quantized here is byte-identical to one quantized by llama-quantize. Row blocks run on all cores: ctypes
releases the GIL, and rows quantize independently (llama.cpp splits them across threads the same way)."""
from __future__ import annotations

import ctypes
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from modelport.formats.errors import RuntimeMissing

ROWS_PER_TASK = 32  # llama.cpp's chunk_size_multiplier x 512 elements per row at typical widths


def _library(stem: str, what: str) -> ctypes.CDLL:
    """`stem` (ggml-base, ggml-cpu) from the llama_cpp package's lib folder, found without importing llama_cpp
    (0.25 s of imports, and its own loader)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeMissing(None, f"{what} needs ggml from llama-cpp-python: pip install 'modelport[llama]'")
    folder = Path(spec.submodule_search_locations[0]) / "lib"
    names = sorted(folder.glob(f"lib{stem}.*"), key=lambda p: len(p.name)) or sorted(folder.glob(f"*{stem}*"))
    if not names:
        raise RuntimeMissing(folder, f"lib{stem} is missing from the llama_cpp package")
    return ctypes.CDLL(str(names[0]))


@cache
def lib() -> ctypes.CDLL:
    """libggml-base: the quantizers."""
    so = _library("ggml-base", "quantization")
    so.ggml_quantize_chunk.restype = ctypes.c_size_t
    so.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                       ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    so.ggml_quantize_init.argtypes = [ctypes.c_int]
    so.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    so.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    so.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    so.ggml_row_size.restype = ctypes.c_size_t
    return so


# float conversions of libggml-cpu, each through f32: SIMD (F16C, AVX-512 BF16, NEON) where the build has it,
# round to nearest even as numpy and ml_dtypes round. BF16 -> F16 runs at 3 GB/s on one core here against
# ml_dtypes' 1.35 GB/s (the cast of a bf16 checkpoint to a GGUF f16 was a third of its CPU time)
TO_F32 = {"BF16": "ggml_cpu_bf16_to_fp32", "F16": "ggml_cpu_fp16_to_fp32"}
FROM_F32 = {"F16": "ggml_cpu_fp32_to_fp16"}
STEP = 1 << 16  # elements per call: the f32 scratch row stays in the core's L2 cache


@cache
def _cpu() -> ctypes.CDLL | None:
    """libggml-cpu, or None without llama-cpp-python (casts then stay with ml_dtypes)."""
    try:
        so = _library("ggml-cpu", "float conversion")
    except (RuntimeMissing, OSError):
        return None
    for fn in (*TO_F32.values(), *FROM_F32.values()):
        getattr(so, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        getattr(so, fn).restype = None
    so.ggml_cpu_init()  # its fp16 tables, where the build converts without SIMD
    return so


def casts(src: str, dst: str) -> bool:
    """Whether ggml converts `src` to `dst` here (F32, F16, BF16 names)."""
    return src != dst and (src == "F32" or src in TO_F32) and (dst == "F32" or dst in FROM_F32) \
        and _cpu() is not None


def cast(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    """`arr` (numpy f32, f16, or BF16 as uint16 bits) as `dst`, through f32 in cache-sized steps."""
    so, flat = _cpu(), np.ascontiguousarray(arr).reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32 if dst == "F32" else np.float16)  # FROM_F32 makes F16 only
    scratch = None if "F32" in (src, dst) else np.empty(min(STEP, flat.size), dtype=np.float32)
    step_in, step_out = flat.itemsize, out.itemsize
    for first in range(0, flat.size, STEP):
        n = min(STEP, flat.size - first)
        a, b = flat.ctypes.data + first * step_in, out.ctypes.data + first * step_out
        if src == "F32":
            getattr(so, FROM_F32[dst])(a, b, n)
        elif dst == "F32":
            getattr(so, TO_F32[src])(a, b, n)
        else:
            getattr(so, TO_F32[src])(a, scratch.ctypes.data, n)
            getattr(so, FROM_F32[dst])(scratch.ctypes.data, b, n)
    return out.reshape(arr.shape)


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
