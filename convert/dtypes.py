"""Float casts between F32 / F16 / BF16 (BF16 travels as uint16 bits). ggml's SIMD conversions (convert.ggml) where
llama-cpp-python is installed, else ml_dtypes' bfloat16 in C++ (4x to 50x faster than numpy or gguf-py's numpy
code); both round to nearest even, so our bytes match llama.cpp's converter; every cast is row-local, so casting
never stops a tensor from streaming."""
from __future__ import annotations

import ml_dtypes
import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType
from gguf.quants import dequantize as gguf_dequantize

from modelport.convert import ggml
from modelport.formats.errors import Unsupported
from modelport.formats.model import NUMPY_DTYPES, Model, TensorRef

FLOATS = ("F32", "F16", "BF16")
FILE_TYPES = {"F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16, "BF16": LlamaFileType.MOSTLY_BF16}
TORCH_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


NUMPY_FLOATS = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}


def to_f32(arr: np.ndarray, dtype: str) -> np.ndarray:
    return _cast(arr, dtype, "F32")


def _cast(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    if ggml.casts(src, dst):
        return ggml.cast(arr, src, dst)
    src_view = arr.view(ml_dtypes.bfloat16) if src == "BF16" else arr
    out = src_view.astype(NUMPY_FLOATS[dst], copy=False)
    return out.view(np.uint16) if dst == "BF16" else out


def dequantize(ref: TensorRef) -> TensorRef:
    """A GGML block-quantized tensor as F32 rows, through gguf-py's dequantizers."""
    qtype, n_per_row = GGMLQuantizationType[ref.result_dtype], ref.shape[-1]
    return ref.map(lambda a: gguf_dequantize(a, qtype).reshape(-1, n_per_row), rowwise=True, dtype="F32")


def cast(ref: TensorRef, dst: str, name: str | None = None) -> TensorRef:
    """`ref` as float `dst`, lazily (quantized tensors are dequantized); the same reference when nothing changes.
    A tensor that is not a float (an integer buffer) is Unsupported, naming its file and `name`."""
    if ref.result_dtype not in NUMPY_DTYPES and ref.result_dtype in GGMLQuantizationType.__members__:
        ref = dequantize(ref)
    src = ref.result_dtype
    if src == dst:
        return ref
    if src not in FLOATS or dst not in FLOATS:
        raise Unsupported(getattr(ref.stored, "path", None),
                          f"{f'tensor {name!r}: ' if name else ''}cannot cast {src} to {dst} (only float tensors convert)")
    return ref.map(lambda a: _cast(a, src, dst), rowwise=True, dtype=dst)


def parse(name: str | None) -> str | None:
    """CLI spelling (f32, f16, bf16) -> F32 / F16 / BF16."""
    if name is None:
        return None
    up = name.upper()
    if up not in FLOATS:
        raise Unsupported(None, f"unknown dtype {name!r}; choose one of f32, f16, bf16")
    return up


def cast_model(model: Model, dtype: str | None) -> Model:
    """The pivot with every tensor cast to `dtype` (default: the source's own precision) and config to match."""
    dtype = dtype or model.metadata.get("dtype")
    if dtype is None:
        return model
    dtype_key = "dtype" if "dtype" in model.config else "torch_dtype"  # transformers 5 and 4 spellings
    config = {**model.config, dtype_key: TORCH_NAMES[dtype]}
    return Model(model.arch, config, {n: cast(r, dtype, n) for n, r in model.tensors.items()}, model.tokenizer,
                 model.generation_config, model.metadata)
