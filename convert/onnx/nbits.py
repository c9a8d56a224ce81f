"""Weights as onnxruntime's MatMulNBits operands: GGUF blocks transcoded without quantizing again, float weights
quantized with onnxruntime's own MatMulNBits kernels (so the bytes are those of its MatMulNBitsQuantizer).

MatMulNBits computes with B [N, K] stored as `qweight` [N, K/block, block*bits/8] (4-bit: element 2j in the low
nibble of byte j), `scales` [N*K/block] and optional `zero_points`: W[n, k] = (q - zp) * scale. Without zero points
zp is 2^(bits-1). What onnxruntime 1.32's CPU kernel accepts (measured with one-node graphs): bits 4 and 8,
block_size 16 and up; uint8 zero points for both widths, float zero points only with bits=4 ("MatMulNBits on CPU does
not support 8-bit weights with floating-point zero points"). So a GGUF type maps as the GRIDS table says; Q5_1 and
Q5_K (5-bit values with a float offset) would need 8-bit float zero points and get None, as do the non-linear grids
(IQ*, TQ*, MXFP4).

The three initializers of one weight are lazy TensorRefs over one computation (convert.parts), so the source is
quantized once however the writer orders them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from modelport.formats.errors import RuntimeMissing, Unsupported
from modelport.formats.model import NUMPY_DTYPES, TensorRef

from modelport.convert.dtypes import cast
from modelport.convert.parts import Compute, Parts, PartSlice

SCALE_DTYPES = ("F32", "F16")
TRANSPOSED_ROWS = 32  # rows per kernel call: their transpose stays in cache (a 4 MiB one costs as much as quantizing)


@dataclass(frozen=True)
class NBits:
    """One MatMulNBits weight: the op's attributes and its initializers, each a lazy TensorRef."""

    K: int
    N: int
    bits: int
    block_size: int
    qweight: TensorRef  # U8 [N, K // block_size, block_size * bits // 8]
    scales: TensorRef  # F32 or F16 [N * K // block_size]
    zero_points: TensorRef | None  # U8 packed, or F32/F16 [N * K // block_size] (float zero points)


def _nbits(source: TensorRef, K: int, bits: int, block: int, scale_dtype: str, zp_dtype: str | None,
           compute: Compute) -> NBits:
    """NBits whose initializers are the parts of `compute` over the rows of `source` (N = its rows)."""
    N, nb = source.result_rows, -(-K // block)
    per_row = {"qweight": (nb, block * bits // 8), "scales": (nb,), "zero_points": (-(-nb * bits // 8),)
               if zp_dtype == "U8" else (nb,)}
    dtypes = {"qweight": "U8", "scales": scale_dtype, "zero_points": zp_dtype}
    names = ("qweight", "scales", "zero_points") if zp_dtype else ("qweight", "scales")
    parts = Parts(source, compute, tuple(int(np.prod(per_row[n])) * np.dtype(NUMPY_DTYPES[dtypes[n]]).itemsize
                                          for n in names))
    refs = {}
    for i, name in enumerate(names):
        ref = TensorRef.on_disk(PartSlice(parts, i), (N,) + per_row[name], dtypes[name])
        # scales and zero points are 1-D [N * per row]: flattening row blocks keeps them streaming
        refs[name] = ref if name == "qweight" else ref.map(lambda a: a.reshape(-1), rowwise=True,
                                                           shape=(N * per_row[name][0],))
    return NBits(K, N, bits, block, refs["qweight"], refs["scales"], refs.get("zero_points"))


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Values (rows, blocks, block) in 0..2^bits-1 as MatMulNBits bytes: 4-bit pairs low nibble first."""
    q = q.astype(np.uint8, copy=False)
    if bits == 8:
        return q
    return q[..., 0::2] | (q[..., 1::2] << np.uint8(4))


# --- GGUF blocks -> MatMulNBits ------------------------------------------------------------------------------------
# A decoder turns rows of GGUF blocks (rows, n_super, type_size) into (q, scale, offset) per MatMulNBits block:
# W = scale * q - offset. q is already shifted so that the default zero point 2^(bits-1) applies when offset is None;
# otherwise the zero point is the float offset / scale. Each follows gguf-py's dequantize_blocks for its type.
# So Q4_0 is bits 4, block 32 with no zero point initializer: the default zero point 8 is Q4_0's own; Q8_0 stores
# q + 128 against the default 128.


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)[..., 0]


def _nibbles(qs: np.ndarray, groups: int) -> np.ndarray:
    """Bytes (..., groups * w) holding 2 values each -> (..., 2 * groups, w): low nibbles of a group, then highs."""
    lead = qs.shape[:-1]
    qs = qs.reshape(*lead, groups, 1, -1) >> np.array([0, 4], dtype=np.uint8).reshape(2, 1)
    return (qs & np.uint8(0x0F)).reshape(*lead, 2 * groups, -1)


def _q4_0(b):  # d, qs[16]: W = d * (q - 8)
    return _nibbles(b[..., 2:], 1).reshape(*b.shape[:-1], 1, 32), _f16(b[..., 0:2])[..., None], None


def _q4_1(b):  # d, m, qs[16]: W = d * q + m
    return _nibbles(b[..., 4:], 1).reshape(*b.shape[:-1], 1, 32), _f16(b[..., 0:2])[..., None], \
        -_f16(b[..., 2:4])[..., None]


def _q5_0(b):  # d, qh (32 high bits), qs[16]: W = d * (q - 16); 8-bit container, q + 112 - 128 = q - 16
    qh = np.unpackbits(b[..., 2:6], axis=-1, bitorder="little")
    q = _nibbles(b[..., 6:], 1).reshape(*b.shape[:-1], 32) | (qh << np.uint8(4))
    return (q + np.uint8(112))[..., None, :], _f16(b[..., 0:2])[..., None], None


def _q8_0(b):  # d, qs int8[32]: W = d * q; stored q + 128 (the sign bit flipped)
    return (b[..., 2:] ^ np.uint8(0x80))[..., None, :], _f16(b[..., 0:2])[..., None], None


def _q2_k(b):  # scales[16] (4-bit scale | 4-bit min), qs[64], d, dmin: 16 blocks of 16, W = d*sc*q - dmin*m
    sc, qs = b[..., 0:16], b[..., 16:80]
    q = (qs.reshape(*qs.shape[:-1], 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1)) & np.uint8(3)
    d, dmin = _f16(b[..., 80:82])[..., None], _f16(b[..., 82:84])[..., None]
    return q.reshape(*b.shape[:-1], 16, 16), d * (sc & 0xF).astype(np.float32), dmin * (sc >> 4).astype(np.float32)


def _q3_k(b):  # hmask[32], qs[64], scales[12] (6-bit, minus 32), d: 16 blocks of 16, W = d*sc*q, q in -4..3 (+8)
    lead = b.shape[:-1]
    hmask, qs, packed = b[..., 0:32], b[..., 32:96], b[..., 96:108]
    low = (packed[..., 0:8].reshape(*lead, 1, 8) >> np.array([0, 4], dtype=np.uint8).reshape(2, 1)).reshape(*lead, 16)
    high = (packed[..., 8:12].reshape(*lead, 1, 4) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1))
    sc = ((low & np.uint8(0x0F)) | ((high.reshape(*lead, 16) & np.uint8(3)) << np.uint8(4))).astype(np.int8) - 32
    ql = (qs.reshape(*lead, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1)) & np.uint8(3)
    qh = (hmask.reshape(*lead, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(8, 1)) & np.uint8(1)
    q = ql.reshape(*lead, 16, 16) + np.uint8(4) + (qh.reshape(*lead, 16, 16) << np.uint8(2))  # q - 4*(1-h) + 8
    return q, _f16(b[..., 108:110])[..., None] * sc.astype(np.float32), None


def _scale_min_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's 12 bytes of 6-bit scales and mins for 8 sub-blocks (gguf-py's Q4_K.get_scale_min, any leading dims)."""
    lead = packed.shape[:-1]
    d, m, m_d = (packed.reshape(*lead, 3, 4)[..., i, :] for i in range(3))
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q4_k(b):  # d, dmin, scales[12], qs[128]: 8 blocks of 32, W = d*sc*q - dmin*m
    sc, mn = _scale_min_k4(b[..., 4:16])
    return _nibbles(b[..., 16:], 4), _f16(b[..., 0:2])[..., None] * sc, _f16(b[..., 2:4])[..., None] * mn


def _q6_k(b):  # ql[128], qh[64], scales int8[16], d: 16 blocks of 16, W = d*sc*(q - 32); stored q + 96
    lead = b.shape[:-1]
    ql = _nibbles(b[..., 0:128], 2).reshape(*lead, 8, 32)  # per half of 64 bytes: low nibbles, then high
    qh = (b[..., 128:192].reshape(*lead, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1)) & 3
    q = ql | (qh.reshape(*lead, 8, 32) << np.uint8(4))
    scale = _f16(b[..., 208:210])[..., None] * b[..., 192:208].view(np.int8).astype(np.float32)
    return (q + np.uint8(96)).reshape(*lead, 16, 16), scale, None


@dataclass(frozen=True)
class Grid:
    """How one GGUF block type sits in MatMulNBits: width, block, decoder, and whether its scales are exactly F16."""

    bits: int
    block: int
    decode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray | None]]
    float_zero_point: bool  # W = scale * q - offset needs the zero point offset / scale
    f16_exact: bool  # the scales are the GGUF's own f16 d (K-quants multiply it by sub-block scales)


GRIDS = {
    "Q4_0": Grid(4, 32, _q4_0, False, True),
    "Q4_1": Grid(4, 32, _q4_1, True, False),
    "Q5_0": Grid(8, 32, _q5_0, False, True),
    "Q8_0": Grid(8, 32, _q8_0, False, True),
    "Q2_K": Grid(4, 16, _q2_k, True, False),
    "Q3_K": Grid(4, 16, _q3_k, False, False),
    "Q4_K": Grid(4, 32, _q4_k, True, False),
    "Q6_K": Grid(8, 16, _q6_k, False, False),
}


def _transcoder(grid: Grid, qtype: GGMLQuantizationType, scale_dtype: str) -> Compute:
    _, type_size = GGML_QUANT_SIZES[qtype]
    np_scale = NUMPY_DTYPES[scale_dtype]

    def compute(rows: np.ndarray) -> tuple[np.ndarray, ...]:
        n = rows.shape[0]
        q, scale, offset = grid.decode(rows.reshape(n, -1, type_size))
        q, scale = q.reshape(n, -1, grid.block), scale.reshape(n, -1)
        if offset is None:
            return _pack(q, grid.bits), scale.astype(np_scale)
        # W = scale*q - offset = (q - offset/scale) * scale; a zero scale leaves W = -offset for the whole block,
        # which q = 0, scale = offset, zero point 1 give exactly
        offset = offset.reshape(n, -1)
        flat = scale == 0
        q = np.where(flat[..., None], np.uint8(0), q)
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = np.where(flat, np.float32(1), offset / np.where(flat, np.float32(1), scale))
        return _pack(q, grid.bits), np.where(flat, offset, scale).astype(np_scale), zp.astype(np_scale)

    return compute


def from_gguf(ref: TensorRef, scale_dtype: str = "F32") -> NBits | None:
    """A GGUF-quantized weight (rows = output features N, row = K inputs, exactly as HF's [N, K] Linear weight) as
    MatMulNBits without quantizing again; None when its grid has no match (GRIDS lists the types that have one).

    Exact (bit for bit, through onnxruntime's CPU kernel) for Q4_0, Q5_0, Q8_0, Q3_K and Q6_K; Q4_1, Q2_K and Q4_K
    need a float zero point offset/scale, exact up to fp32 rounding of the products. F16 scales are exact only where
    the scale is the GGUF's own f16 d (Q4_0, Q5_0, Q8_0): for the others F16 gives None rather than a new rounding.
    """
    if scale_dtype not in SCALE_DTYPES:
        raise Unsupported(None, f"MatMulNBits scales are F32 or F16, not {scale_dtype}")
    grid = GRIDS.get(ref.result_dtype)
    if grid is None or len(ref.shape) != 2 or (scale_dtype == "F16" and not grid.f16_exact):
        return None
    qtype = GGMLQuantizationType[ref.result_dtype]
    zp_dtype = scale_dtype if grid.float_zero_point else None
    return _nbits(ref, ref.shape[1], grid.bits, grid.block, scale_dtype, zp_dtype,
                  _transcoder(grid, qtype, scale_dtype))


# --- float weights -> MatMulNBits through onnxruntime's kernels ----------------------------------------------------


def _kernels(bits: int):
    try:
        from onnxruntime.capi import _pybind_state as ort
    except ImportError:
        raise RuntimeMissing(None, "MatMulNBits quantization needs onnxruntime: pip install 'modelport[onnx]'") \
            from None
    return {4: ort.quantize_matmul_4bits, 8: ort.quantize_matmul_8bits}[bits]


def _quantizer(bits: int, block: int, K: int, dtype: type, symmetric: bool) -> Compute:
    """Rows [n, K] of an HF weight -> onnxruntime's MatMulNBits operands. The kernel quantizes a MatMul B [K, N]
    column by column, so a few rows of the HF weight, transposed, are a complete input of their own. The binding
    holds the GIL and runs the kernel on a thread pool of its own (measured: two Python threads calling it take as
    long as one after the other), so row blocks overlap only their reading and casting with it."""
    kernel, nb, kpack = _kernels(bits), -(-K // block), 8 // bits

    def compute(rows: np.ndarray) -> tuple[np.ndarray, ...]:
        n = rows.shape[0]
        rows = rows.astype(dtype, copy=False)
        packed = np.zeros((n, nb, block // kpack), dtype=np.uint8)
        scales = np.zeros((n, nb), dtype=dtype)
        zero_points = np.zeros((n, -(-nb // kpack)), dtype=np.uint8)
        for a in range(0, n, TRANSPOSED_ROWS):
            b = min(n, a + TRANSPOSED_ROWS)
            kernel(packed[a:b], np.ascontiguousarray(rows[a:b].T), scales[a:b], zero_points[a:b], block, b - a, K,
                   symmetric)
        return (packed, scales) if symmetric else (packed, scales, zero_points)

    return compute


def from_float(ref: TensorRef, bits: int, block_size: int, scale_dtype: str = "F32",
               symmetric: bool = False) -> NBits:
    """A float weight [N, K] quantized with onnxruntime's MatMulNBits quantizer kernels.

    Bytes equal those of onnxruntime's MatMulNBitsQuantizer (DefaultWeightOnlyQuantConfig: asymmetric with uint8
    zero points unless `symmetric`) on a model whose weight is this tensor in `scale_dtype`."""
    if bits not in (4, 8):
        raise Unsupported(None, f"MatMulNBits from float weights is 4- or 8-bit, not {bits}-bit")
    if block_size < 16 or block_size & (block_size - 1):
        raise Unsupported(None, f"MatMulNBits block size must be a power of two >= 16, not {block_size}")
    if scale_dtype not in SCALE_DTYPES:
        raise Unsupported(None, f"MatMulNBits scales are F32 or F16, not {scale_dtype}")
    if len(ref.shape) != 2:
        raise Unsupported(None, f"MatMulNBits needs a 2-D weight, not shape {list(ref.shape)}")
    source = cast(ref, scale_dtype)
    K = ref.shape[1]
    return _nbits(source, K, bits, block_size, scale_dtype, None if symmetric else "U8",
                  _quantizer(bits, block_size, K, NUMPY_DTYPES[scale_dtype], symmetric))

