"""Quantizing the GGUF tensor list in the same streaming pass that writes it: llama.cpp's per-tensor type choice
(convert.quant_plan) decides each tensor's type, ggml's kernels (convert.ggml) do the work row block by row block,
from the source values (F32 or BF16 widened to F32), exactly as llama-quantize does on a lossless GGUF."""
from __future__ import annotations

import re
from dataclasses import asdict, replace

from gguf import GGMLQuantizationType

from modelport.formats.errors import BadInput, Unsupported
from modelport.formats.model import TensorRef

from modelport.convert import ggml
from modelport.convert.gguf import quant_plan
from modelport.convert.dtypes import FLOATS, cast
from modelport.convert.gguf.imatrix import Imatrix


def preset(name: str) -> str:
    """A --quant name, case-insensitive; unknown names list the valid ones."""
    up = name.upper()
    if up not in quant_plan.PRESETS:
        raise BadInput(None, f"unknown quantization {name!r}; valid: {', '.join(quant_plan.PRESETS)}")
    return up


def llama_order(name: str) -> tuple[int, str]:
    """llama.cpp's weight_name_comparer: tensors outside blocks first, then block by block, by name within each.
    llama-quantize writes (and counts attn_v / ffn_down layers) in this order, so we do too."""
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m[1]) if m else -1, name)


def ggml_dims(ref: TensorRef) -> TensorRef:
    """The tensor with the dimensions llama-quantize writes (ggml_n_dims): sizes of 1 that lead in numpy order
    (trail in ggml's) dropped, as for qwen2moe's (1, n_embd) shared-expert gate."""
    shape = ref.shape
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return ref if shape == ref.shape else replace(ref, shape=shape)


def _quantizer(qtype: GGMLQuantizationType, n_per_row: int, imp):
    return lambda a: ggml.quantize_rows(a.reshape(-1, n_per_row), qtype, imp)


def quantize(tensors: list[tuple[str, TensorRef]], arch: str, hparams: dict, ftype: str,
             imatrix: Imatrix | None = None) -> tuple[list[tuple[str, TensorRef]], list[dict]]:
    """The tensors in llama.cpp's order with their preset types applied lazily, and one record per tensor (type,
    fallback reason)."""
    tensors = sorted(tensors, key=lambda t: llama_order(t[0]))
    choices = quant_plan.plan(ftype, arch, hparams, [(n, r.shape, r.result_dtype) for n, r in tensors],
                              imatrix=imatrix is not None)
    out = []
    for (name, ref), choice in zip(tensors, choices):
        ref = ggml_dims(ref)
        if choice.type == ref.result_dtype:
            out.append((name, ref))
            continue
        if choice.type in FLOATS:
            out.append((name, cast(ref, choice.type)))
            continue
        qtype = GGMLQuantizationType[choice.type]
        imp = imatrix.values.get(name) if imatrix else None
        n_per_row = ref.shape[-1]
        if imp is None and ggml.requires_imatrix(qtype):
            raise Unsupported(None, f"{choice.type} for tensor {name!r} needs an importance matrix: pass --imatrix FILE")
        if imp is not None and imp.size != n_per_row:
            raise BadInput(imatrix.path, f"entry {name!r} has {imp.size} values, the tensor's rows have {n_per_row}")
        f32 = cast(ref, "F32")
        out.append((name, f32.map(_quantizer(qtype, n_per_row, imp), rowwise=True, dtype=choice.type)))
    return out, [asdict(c) for c in choices]
