"""onnxruntime's MatMulNBits quantizer kernels, run in worker processes when the rows are large enough to pay.

The Python binding (`quantize_matmul_4bits` / `_8bits`) holds the GIL for the whole call and the kernel inside uses
about one core (measured on a 1B int4 export: 1.2 cores busy on 2), so threads cannot overlap two kernel calls. A
pool of spawned processes, one per core, can: each row block travels to a worker and its packed bytes come back.
Spawned (not forked) workers import numpy and the binding only, ignore Ctrl-C (the parent stops them), and start
once per process, on the first block large enough (POOL_MIN_BYTES): tiny models never start them.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import cache

import numpy as np

from modelport.formats.errors import RuntimeMissing, WriteFailed

TRANSPOSED_ROWS = 32  # rows per kernel call: their transpose stays in cache (a 4 MiB one costs as much as quantizing)
POOL_MIN_BYTES = 1 << 20  # smaller row blocks quantize in this process: a round trip costs more than the kernel


def _kernel(bits: int):
    try:
        from onnxruntime.capi import _pybind_state as ort
    except ImportError:
        raise RuntimeMissing(None, "MatMulNBits quantization needs onnxruntime: pip install 'modelport[onnx]'") \
            from None
    return {4: ort.quantize_matmul_4bits, 8: ort.quantize_matmul_8bits}[bits]


def quantize(rows: np.ndarray, bits: int, block: int, symmetric: bool) -> tuple[np.ndarray, ...]:
    """Rows [n, K] of an HF weight (f32 or f16) -> MatMulNBits (qweight, scales[, zero points]) for those rows. The
    kernel quantizes a MatMul B [K, N] column by column, so a few rows, transposed, are a complete input of their
    own."""
    kernel, (n, K), kpack = _kernel(bits), rows.shape, 8 // bits
    nb = -(-K // block)
    packed = np.zeros((n, nb, block // kpack), dtype=np.uint8)
    scales = np.zeros((n, nb), dtype=rows.dtype)
    zero_points = np.zeros((n, -(-nb // kpack)), dtype=np.uint8)
    for a in range(0, n, TRANSPOSED_ROWS):
        b = min(n, a + TRANSPOSED_ROWS)
        kernel(packed[a:b], np.ascontiguousarray(rows[a:b].T), scales[a:b], zero_points[a:b], block, b - a, K,
               symmetric)
    return (packed, scales) if symmetric else (packed, scales, zero_points)


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@cache
def _pool() -> ProcessPoolExecutor | None:
    workers = os.cpu_count() or 1
    if workers < 2:
        return None
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_quiet_worker)


def quantize_anywhere(rows: np.ndarray, bits: int, block: int, symmetric: bool) -> tuple[np.ndarray, ...]:
    """`quantize`, in a worker process when the block is large and there is more than one core. Called from the
    writer's prefetch threads, which wait here without the GIL while the workers run side by side."""
    pool = _pool() if rows.nbytes >= POOL_MIN_BYTES else None
    if pool is None:
        return quantize(rows, bits, block, symmetric)
    try:
        return pool.submit(quantize, rows, bits, block, symmetric).result()
    except BrokenProcessPool as e:  # a worker killed (out of memory, a signal): no output is written
        raise WriteFailed(None, f"a MatMulNBits quantizer process died ({e})") from None
