"""Weights as standard ONNX operators: DequantizeLinear (opset 21, block-wise) of an INT4 / UINT4 / INT8 / UINT8
initializer feeding a plain MatMul, the form execution providers without onnxruntime's contrib ops take (OpenVINO,
DirectML, QNN, TensorRT...) and that onnxruntime's CPU fuses back into MatMulNBits at load.

The layout is the one onnxruntime's own QDQ quantizer writes (MatMulNBitsQuantizer, quant_format=QDQ): the MatMul's
B [K, N] with `axis=0` and `block_size` along K, scales and zero points [ceil(K / block), N]; 4-bit values packed two
to a byte in row-major order, low nibble first (ONNX's INT4 layout).

Nothing is quantized here: a weight's MatMulNBits operands (convert/onnx/nbits.py: GGUF blocks transcoded, or float
weights through onnxruntime's quantizer kernels) are repacked, so a QDQ weight dequantizes to exactly the values of the
MatMulNBits export. Operands without a zero point (GGUF Q4_0, Q8_0...: stored against the default 2^(bits-1)) become
signed INT4 / INT8 without one; uint8 zero points become UINT4 / UINT8 zero points. Float zero points (Q4_1, Q4_K,
Q2_K) have no QDQ form (DequantizeLinear's zero point has the integer type): None.

MatMulNBits holds rows of N, QDQ rows of K: the transpose needs every row of the source, so a weight's packed
MatMulNBits operands (1/8 of its float32 size in 4-bit) are held while its QDQ initializers stream out in row blocks.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np

from modelport.formats.model import CHUNK_BYTES, NUMPY_DTYPES, TensorRef

from modelport.convert.onnx.nbits import NBits

OPSET = 21  # DequantizeLinear's block_size and the 4-bit types
INT_TYPES = {(4, True): "I4", (4, False): "U4", (8, True): "I8", (8, False): "U8"}  # (bits, signed) -> dtype


@dataclass(frozen=True)
class QDQ:
    """One weight as DequantizeLinear operands (MatMul B layout [K, N], blocks along axis 0)."""

    K: int
    N: int
    bits: int
    block_size: int
    quantized: TensorRef  # I4 / U4 / I8 / U8 [K, N]
    scales: TensorRef  # F32 / F16 [ceil(K / block), N]
    zero_points: TensorRef | None  # the quantized type, [ceil(K / block), N]


MIN_BLOCK = 16  # the smallest block onnxruntime's MatMulNBits kernels take


def whole_block(k: int, block: int) -> int:
    """The block size for a weight of K inputs: `block`, or the largest power of two from MIN_BLOCK up that divides
    K, since OpenVINO refuses a partial last block (2026.4: "dimension of X at axis 0 (192) cannot be divided by
    block_size (128)"); `block` when none divides K."""
    b = block
    while b > MIN_BLOCK and k % b:
        b //= 2
    return b if k % b == 0 else block


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes (..., m) -> values (..., m * 8 / bits), low bits first (MatMulNBits' and ONNX INT4's order)."""
    if bits == 8:
        return packed
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    return ((packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(*packed.shape[:-1], -1)


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Values 0..2^bits-1 (row-major, an even count for 4-bit) -> ONNX's packed bytes, low nibble first."""
    values = values.astype(np.uint8, copy=False).reshape(-1)
    return values if bits == 8 else values[0::2] | (values[1::2] << np.uint8(4))


@cache
def _readers() -> ThreadPoolExecutor:
    """A pool of its own: the whole-weight read below runs inside a row block of the writer's pool."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="modelport-qdq")


def _whole(ref: TensorRef) -> np.ndarray:
    """An untransformed lazy tensor read whole, in row ranges on several threads, so that reading and casting its
    source overlap the quantizer kernel as the writer's prefetch does for MatMulNBits (measured on a 8192x2048
    weight: 0.83 s against 1.44 s read in one go)."""
    rows = max(1, CHUNK_BYTES // 4 // max(1, ref.row_bytes))

    def part(a: int) -> np.ndarray:
        b = min(ref.n_rows, a + rows)
        return np.frombuffer(ref.stored.read(a * ref.row_bytes, b * ref.row_bytes), dtype=np.uint8)

    return np.concatenate(list(_readers().map(part, range(0, ref.n_rows, rows)))).reshape(ref.shape)


class _Repack:
    """The MatMulNBits operands of one weight, read once (whole) and served transposed as the QDQ parts."""

    def __init__(self, nb: NBits, signed: bool):
        self.nb, self.signed = nb, signed
        self.blocks = -(-nb.K // nb.block_size)
        self.lock = threading.Lock()
        self.rows: np.ndarray | None = None  # MatMulNBits qweight [N, blocks, block * bits / 8] while needed
        self.served = 0

    def quantized_rows(self, a: int, b: int) -> np.ndarray:
        """Rows a..b of the QDQ weight [K, N] as values (flipped to two's complement when signed)."""
        nb, bs = self.nb, self.nb.block_size
        with self.lock:
            if self.rows is None:
                self.rows = _whole(nb.qweight)
            rows = self.rows
        first, last = a // bs, -(-b // bs)
        values = unpack(rows[:, first:last], nb.bits).reshape(nb.N, -1)[:, a - first * bs:b - first * bs]
        if self.signed:  # q stored against the default zero point 2^(bits-1): q - 2^(bits-1) in two's complement
            values = values ^ np.uint8(1 << (nb.bits - 1))
        return values.T

    def done(self, nbytes: int) -> None:
        with self.lock:
            self.served += nbytes
            if self.served >= quantized_bytes(self.nb):
                self.rows = None

    def scales(self) -> np.ndarray:
        return np.ascontiguousarray(self.nb.scales.read().reshape(self.nb.N, self.blocks).T)

    def zero_points(self) -> np.ndarray:
        zp = unpack(np.asarray(self.nb.zero_points.read()).reshape(self.nb.N, -1), self.nb.bits)[:, :self.blocks]
        return pack(np.ascontiguousarray(zp.T), self.nb.bits)


def quantized_bytes(nb: NBits) -> int:
    return nb.K * nb.N * nb.bits // 8


@dataclass(frozen=True)
class _QuantizedSlice:
    """The QDQ weight's bytes [K, N], computed on demand by row ranges (a stored slice for TensorRef)."""

    repack: _Repack

    @property
    def nbytes(self) -> int:
        return quantized_bytes(self.repack.nb)

    def read(self, start: int = 0, stop: int | None = None) -> bytes:
        nb = self.repack.nb
        row = nb.N * nb.bits // 8
        stop = self.nbytes if stop is None else stop
        a, b = start // row, -(-stop // row)
        data = pack(self.repack.quantized_rows(a, b), nb.bits)[start - a * row:stop - a * row]
        self.repack.done(stop - start)
        return data.tobytes()


class _Small:
    """A small part (scales, zero points): computed when first read, kept until read in full."""

    def __init__(self, compute, nbytes: int):
        self.compute, self.nbytes = compute, nbytes
        self.lock = threading.Lock()
        self.data: bytes | None = None
        self.served = 0

    def read(self, start: int = 0, stop: int | None = None) -> bytes:
        stop = self.nbytes if stop is None else stop
        with self.lock:
            data = self.data = self.data if self.data is not None else self.compute().tobytes()
            self.served += stop - start
            if self.served >= self.nbytes:
                self.data = None
        return data[start:stop]


def from_nbits(nb: NBits) -> QDQ | None:
    """MatMulNBits operands as DequantizeLinear ones holding the same values; None for float zero points (no QDQ
    form) and for a 4-bit weight with an odd N (its rows would not start on a byte)."""
    if nb.zero_points is not None and nb.zero_points.dtype != "U8":
        return None
    if nb.bits == 4 and nb.N % 2:
        return None
    signed = nb.zero_points is None
    repack, blocks = _Repack(nb, signed), -(-nb.K // nb.block_size)
    dtype = INT_TYPES[(nb.bits, signed)]
    scale_dtype = nb.scales.result_dtype
    scales = TensorRef.on_disk(_Small(repack.scales, blocks * nb.N * np.dtype(NUMPY_DTYPES[scale_dtype]).itemsize),
                               (blocks, nb.N), scale_dtype)
    zero_points = None if signed else TensorRef.on_disk(
        _Small(repack.zero_points, -(-blocks * nb.N * nb.bits // 8)), (blocks, nb.N), dtype)
    return QDQ(nb.K, nb.N, nb.bits, nb.block_size, TensorRef.on_disk(_QuantizedSlice(repack), (nb.K, nb.N), dtype),
               scales, zero_points)


def int_values(data: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A quantized initializer's integers (int16) in its logical shape: 4-bit ones unpacked, signed ones
    sign-extended."""
    if dtype in ("I8", "U8"):
        return data.astype(np.int16).reshape(shape)
    values = unpack(np.ascontiguousarray(data).view(np.uint8).reshape(-1), 4)[:int(np.prod(shape))].astype(np.int16)
    if dtype == "I4":
        values = np.where(values >= 8, values - 16, values)
    return values.reshape(shape)


def dequantize(values: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, axis: int,
               block_size: int) -> np.ndarray:
    """DequantizeLinear's (x - zero point) * scale in float32 (exact for F32/F16/BF16 scales times small integers),
    blocked along `axis` (block_size 0: per axis or per tensor, broadcast as the operator does). Written here: onnx's
    reference implementation evaluates whole graphs, not a lazily read tensor."""
    def spread(p: np.ndarray) -> np.ndarray:
        p = p.astype(np.float32)
        if block_size:
            return np.repeat(p, block_size, axis=axis)[tuple(slice(0, d) for d in values.shape)]
        if p.ndim == 1 and p.size > 1:
            return p.reshape([-1 if i == axis % values.ndim else 1 for i in range(values.ndim)])
        return p

    x = values.astype(np.float32)
    if zero_points is not None:
        x = x - spread(zero_points)
    return x * spread(scales)
