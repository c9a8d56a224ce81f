"""MLX affine quantization as lazy tensors: w = scale * q + bias per group of `group_size` values along a row, q
packed `bits` at a time into U32 words as one little-endian bit stream (first value in the lowest bits; 3-, 5- and
6-bit values cross word boundaries). Measured against mlx 0.32's mx.quantize / mx.dequantize for 2 to 8 bits.

- float -> MLX: mlx's own `mx.quantize` on row blocks (rows quantize independently), so the bytes are mlx_lm.convert's.
- GGUF Q4_0 / Q4_1 / Q8_0 -> 4- / 8-bit group 32 without quantizing again: scale d and bias -8d / m / -128d, in F32,
  so scale * q + bias reproduces gguf-py's f32 values bit for bit (d * q is exact in f32; in F16 it would round).
- MLX -> float: the values mx.dequantize gives, computed here in numpy in the scales' dtype (one rounding per
  operation, as mlx does), so reading needs no mlx.
Bit packing is written here with numpy's packbits: no library exposes mlx's layout without mlx itself."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import ml_dtypes
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from modelport.formats.errors import RuntimeMissing
from modelport.formats.model import NUMPY_DTYPES, TensorRef

from modelport.convert.dtypes import NUMPY_FLOATS
from modelport.convert.parts import Compute, Parts, PartSlice

GGUF_GROUP = 32
SCALE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Values [rows, n] (0 .. 2^bits - 1) as U32 words [rows, n * bits / 32]."""
    stream = ((q[..., None].astype(np.uint32) >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(stream.reshape(q.shape[0], -1), axis=-1, bitorder="little").view(np.uint32)


def unpack(words: np.ndarray, bits: int) -> np.ndarray:
    """U32 words [rows, w] -> values [rows, w * 32 / bits] (uint8)."""
    stream = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=-1, bitorder="little")
    stream = stream.reshape(words.shape[0], -1, bits)
    return (stream << np.arange(bits, dtype=np.uint8)).sum(-1, dtype=np.uint8)


# --- MLX -> float ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowZip:
    """Row i is the bytes of row i of each part, side by side: one quantized layer's weight, scales and biases read
    as one tensor, so dequantizing streams a row block at a time."""

    parts: tuple
    rows: int

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        widths = [p.nbytes // self.rows for p in self.parts]
        total, stop = sum(widths), self.nbytes if stop is None else stop
        a, b = start // total, -(-stop // total)
        cols = [np.frombuffer(p.read(a * w, b * w), dtype=np.uint8).reshape(b - a, w) for p, w in zip(self.parts, widths)]
        return np.hstack(cols).reshape(-1)[start - a * total:stop - a * total]


def dequantized(weight: TensorRef, scales: TensorRef, biases: TensorRef, bits: int, group: int) -> TensorRef:
    """A 2-D quantized layer as the float tensor MLX computes with, in its scales' dtype."""
    rows, words = weight.shape
    groups, dtype = scales.shape[-1], scales.dtype
    numpy_dtype = NUMPY_FLOATS[dtype]
    wb, sb = words * 4, groups * SCALE_BYTES[dtype]

    def fn(raw: np.ndarray) -> np.ndarray:
        n = raw.shape[0]
        q = unpack(np.ascontiguousarray(raw[:, :wb]).view(np.uint32), bits).reshape(n, groups, group)
        s = np.ascontiguousarray(raw[:, wb:wb + sb]).view(NUMPY_DTYPES[dtype]).view(numpy_dtype)[..., None]
        b = np.ascontiguousarray(raw[:, wb + sb:]).view(NUMPY_DTYPES[dtype]).view(numpy_dtype)[..., None]
        w = (q.astype(numpy_dtype) * s + b).reshape(n, groups * group)
        return w.view(np.uint16) if dtype == "BF16" else w

    zipped = TensorRef(weight.shape, "U8", RowZip((weight.stored, scales.stored, biases.stored), rows),
                       (rows, wb + 2 * sb))
    return zipped.map(fn, rowwise=True, shape=(rows, groups * group), dtype=dtype)


# --- writing: one source tensor -> weight, scales, biases -------------------------------------------------------------


def layer(source: TensorRef, bits: int, group: int, scale_dtype: str, compute: Compute
          ) -> tuple[TensorRef, TensorRef, TensorRef]:
    """The weight (U32), scales and biases of `source` ([..., rows, K], stacked experts too) as lazy tensors over
    one computation of `compute` on its rows."""
    lead, K, rows = source.shape[:-1], source.shape[-1], source.n_rows
    words, groups = K * bits // 32, K // group
    parts = Parts(source, compute, (words * 4, groups * SCALE_BYTES[scale_dtype], groups * SCALE_BYTES[scale_dtype]))
    w = TensorRef(lead + (words,), "U32", PartSlice(parts, 0), (rows, words))
    s = TensorRef(lead + (groups,), scale_dtype, PartSlice(parts, 1), (rows, groups))
    b = TensorRef(lead + (groups,), scale_dtype, PartSlice(parts, 2), (rows, groups))
    return w, s, b


_MX_LOCK = threading.Lock()  # row blocks are computed on worker threads; mlx's CPU stream is used by one at a time


def _mx():
    try:
        import mlx.core as mx
    except ImportError:
        raise RuntimeMissing(None, "quantized MLX output needs mlx: pip install 'modelport[mlx]'") from None
    return mx


def quantizer(bits: int, group: int, dtype: str) -> Compute:
    """Float rows (`dtype`; BF16 as its uint16 bits) -> mx.quantize's words, scales and biases (in `dtype`)."""
    mx = _mx()

    def compute(rows: np.ndarray) -> tuple[np.ndarray, ...]:
        with _MX_LOCK:
            x = mx.array(np.ascontiguousarray(rows))
            if dtype == "BF16":
                x = x.view(mx.bfloat16)
            wq, s, b = mx.quantize(x, group_size=group, bits=bits)
            if dtype == "BF16":
                s, b = s.view(mx.uint16), b.view(mx.uint16)
            return np.array(wq), np.array(s), np.array(b)

    return compute


# --- GGUF blocks -> MLX (each decoder follows gguf-py's dequantize_blocks for its type) ------------------------------


def _d(blocks: np.ndarray, at: int = 0) -> np.ndarray:
    return np.ascontiguousarray(blocks[..., at:at + 2]).view(np.float16)[..., 0].astype(np.float32)


def _q4_0(blocks):  # d, qs[16] (element i low nibble, i + 16 high): W = d * (q - 8)
    qs = blocks[..., 2:]
    d = _d(blocks)
    return np.concatenate([qs & 15, qs >> 4], axis=-1), d, -8 * d


def _q4_1(blocks):  # d, m, qs[16]: W = d * q + m
    qs = blocks[..., 4:]
    return np.concatenate([qs & 15, qs >> 4], axis=-1), _d(blocks), _d(blocks, 2)


def _q8_0(blocks):  # d, qs int8[32]: W = d * q, stored here as q + 128 against a bias of -128 d
    d = _d(blocks)
    return blocks[..., 2:] ^ np.uint8(128), d, -128 * d


# GGUF type -> (MLX bits at group size 32, decoder of blocks [rows, n_blocks, type size] -> (q, scale, bias))
BLOCKS: dict[str, tuple[int, Callable]] = {"Q4_0": (4, _q4_0), "Q4_1": (4, _q4_1), "Q8_0": (8, _q8_0)}


def transcoder(qtype: str) -> Compute:
    """Rows of GGUF blocks -> MLX words, F32 scales and biases holding exactly the same values."""
    bits, decode = BLOCKS[qtype]
    size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][1]

    def compute(rows: np.ndarray) -> tuple[np.ndarray, ...]:
        n = rows.shape[0]
        q, s, b = decode(rows.reshape(n, -1, size))
        return pack(q.reshape(n, -1), bits), s.reshape(n, -1), b.reshape(n, -1)

    return compute
