"""Float casts between F32 / F16 / BF16 (BF16 travels as uint16 bits). gguf-py's BF16 rounding is used so our
bytes match llama.cpp's converter; every cast is row-local, so casting never stops a tensor from streaming."""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize

from modelport.formats.errors import Unsupported
from modelport.formats.model import TensorRef

FLOATS = ("F32", "F16", "BF16")
FILE_TYPES = {"F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16, "BF16": LlamaFileType.MOSTLY_BF16}
TORCH_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def to_f32(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32, copy=False)


def _cast(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    if dst == "F32":
        return to_f32(arr, src)
    if dst == "F16":
        return to_f32(arr, src).astype(np.float16) if src == "BF16" else arr.astype(np.float16)
    return quantize(to_f32(arr, src), GGMLQuantizationType.BF16).view(np.uint16).reshape(arr.shape)


def dequantize(ref: TensorRef) -> TensorRef:
    """A GGML block-quantized tensor as F32 rows, through gguf-py's dequantizers."""
    qtype, n_per_row = GGMLQuantizationType[ref.result_dtype], ref.shape[-1]
    return ref.map(lambda a: gguf_dequantize(a, qtype).reshape(-1, n_per_row), rowwise=True, dtype="F32")


def cast(ref: TensorRef, dst: str) -> TensorRef:
    """`ref` as float `dst`, lazily (quantized tensors are dequantized); the same reference when nothing changes."""
    if ref.result_dtype not in FLOATS and ref.result_dtype in GGMLQuantizationType.__members__:
        ref = dequantize(ref)
    src = ref.result_dtype
    if src == dst:
        return ref
    if src not in FLOATS or dst not in FLOATS:
        raise Unsupported(None, f"cannot cast {src} to {dst}")
    return ref.map(lambda a: _cast(a, src, dst), rowwise=True, dtype=dst)


def parse(name: str | None) -> str | None:
    """CLI spelling (f32, f16, bf16) -> F32 / F16 / BF16."""
    if name is None:
        return None
    up = name.upper()
    if up not in FLOATS:
        raise Unsupported(None, f"unknown dtype {name!r}; choose one of f32, f16, bf16")
    return up
