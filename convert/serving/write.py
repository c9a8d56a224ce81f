"""The pivot as a compressed-tensors pack-quantized checkpoint: every nn.Linear weight quantized round-to-nearest
(min/max per group, as llm-compressor's default observer) and packed by compressed-tensors' own functions, one
module at a time; embeddings, norms, the LM head and MoE routers stay float, as llm-compressor leaves them.

GGUF Q4_0 / Q8_0 weights are transcoded, not requantized: their blocks are int4 / int8 symmetric groups of 32 with
scale d, which is exactly compressed-tensors' symmetric group-32 grid, so the values come through unchanged."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization.utils import calculate_qparams
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from modelport.convert import archs, dtypes, experts
from modelport.formats.errors import RuntimeMissing, Unsupported
from modelport.formats.model import NUMPY_DTYPES, Model, TensorRef

from . import lazy, scheme

# nn.Linear modules llm-compressor's recipes leave float: the LM head (default ignore) and MoE routers (vLLM's
# fused-MoE kernels take the router in float; llm-compressor's MoE examples ignore it)
FLOAT_LINEARS = (r"lm_head", r".*\.block_sparse_moe\.gate", r".*\.mlp\.gate", r".*\.shared_expert_gate")
# GGML block types whose grid is compressed-tensors' symmetric group-32 grid: type -> weight bits. Each block is
# a float16 scale d then 32 signed integers q (Q4_0 stores q + 8 as nibbles), value = d * q.
TRANSCODED = {"Q4_0": 4, "Q8_0": 8}
GGUF_GROUP = 32
SLOT = lazy.OneSlot()  # the module being quantized
# weights compressed per call: a multiple of 32 rows, so zero points packed along rows fill the same int32 words
BLOCK_ELEMENTS = 1 << 21


def linear_modules(config: dict, path: Path | None) -> list[str]:
    """The nn.Linear modules of the model transformers builds from `config` (on the meta device: no memory), the
    modules compressed-tensors' `targets: [Linear]` matches when it loads the checkpoint."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise RuntimeMissing(path, "compressed-tensors output needs transformers: pip install 'modelport[serving]'") \
            from None
    cfg = {k: v for k, v in config.items() if k not in ("quantization_config",)}
    try:
        hf_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    except (KeyError, ValueError) as e:
        raise Unsupported(path, f"transformers does not know this model type: {e}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    # each expert's projections too: nn.Linear modules in the hub's per-expert layout that vLLM / SGLang load, though
    # transformers 5 fuses a layer's experts into one module of 3-D parameters
    family = archs.registry().get(config.get("model_type"))
    per_expert = [n.removesuffix(".weight") for n in experts.per_expert(family, config)] if family else []
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)] + per_expert


def _float_weight(ref: TensorRef) -> torch.Tensor:
    """The weight as stored in float (GGML blocks dequantized to F32 by gguf-py)."""
    ref = ref if ref.result_dtype in NUMPY_DTYPES else dtypes.dequantize(ref)
    return lazy.to_torch(ref.read(), ref.result_dtype).reshape(ref.shape)


def _compress(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, sch) -> dict[str, torch.Tensor]:
    """PackedQuantizationCompressor.compress over blocks of rows: the bytes of one call on the whole weight (each
    row, and each 32 rows of zero points, pack on their own) with a fraction of its int32 temporaries."""
    step = max(32, BLOCK_ELEMENTS // w.shape[1] // 32 * 32)
    blocks = [PackedQuantizationCompressor.compress(
        {"weight": w[r:r + step], "weight_scale": scale[r:r + step],
         **({"weight_zero_point": zero_point[r:r + step]} if zero_point is not None else {})}, sch)
        for r in range(0, w.shape[0], step)]
    out = {k: torch.cat([b[k] for b in blocks]) for k in blocks[0] if k != "weight_shape"}
    return {**out, "weight_shape": torch.tensor(w.shape)}


def _quantize(ref: TensorRef, args, sch) -> dict[str, torch.Tensor]:
    """compressed-tensors' quantize + pack of one weight, with min/max per group (llm-compressor's observer)."""
    w = _float_weight(ref)
    groups = w.unflatten(-1, (w.shape[-1] // args.group_size, args.group_size))
    scale, zero_point = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
    return _compress(w, scale, zero_point, sch)


def _transcode(ref: TensorRef, args, sch) -> dict[str, torch.Tensor]:
    """A Q4_0 / Q8_0 weight on compressed-tensors' grid: gguf-py's values and the blocks' own scales d (F32, which
    holds them exactly), so quantizing with them gives back each block's integers."""
    qtype = GGMLQuantizationType[ref.result_dtype]
    block, size = GGML_QUANT_SIZES[qtype]
    rows = ref.read()
    d = np.ascontiguousarray(rows.reshape(ref.shape[0], -1, size)[..., :2]).view(np.float16)[..., 0]
    w = torch.from_numpy(gguf_dequantize(rows, qtype).reshape(ref.shape))
    scale = torch.from_numpy(d.astype(np.float32))
    scale = torch.where(scale == 0, torch.finfo(torch.float32).eps, scale)  # as calculate_qparams: no 0 divisor
    return _compress(w, scale, None, sch)


def _parts(ref: TensorRef, bits: int, group: int, symmetric: bool, scale_dtype: str) \
        -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and dtype of each stored part of a packed weight, planned before anything is computed."""
    out, cols = ref.shape
    parts = {"weight_packed": ((out, math.ceil(cols * bits / 32)), "I32"),
             "weight_scale": ((out, cols // group), scale_dtype),
             "weight_shape": ((2,), "I64")}
    if not symmetric:
        parts["weight_zero_point"] = ((math.ceil(out * bits / 32), cols // group), "I32")
    return parts


def plan(model: Model, bits: int, group: int, symmetric: bool, path: Path | None) \
        -> tuple[dict[str, TensorRef], list[str], list[dict]]:
    """The output's tensors (lazy), the float Linear modules (`ignore`), and a note per weight that did not go
    the plain way (transcoded, requantized from another GGML type, or left float)."""
    floats = re.compile("|".join(FLOAT_LINEARS))
    linears = set(linear_modules(model.config, path))
    args = scheme.weight_args(bits, group, symmetric)
    sch = scheme.scheme(bits, group, symmetric)
    names = PackedQuantizationCompressor.compression_param_names(sch)
    tensors: dict[str, TensorRef] = {}
    ignore, notes = [], []
    for name, ref in model.tensors.items():
        module = name.removesuffix(".weight")
        if module not in linears or name == module:
            tensors[name] = ref if ref.result_dtype in NUMPY_DTYPES else dtypes.dequantize(ref)
            continue
        kind = ref.result_dtype
        why = None if not floats.fullmatch(module) else "kept float (LM head / MoE router)"
        if why is None and (len(ref.shape) != 2 or ref.shape[-1] % group):
            why = f"kept float: {ref.shape[-1]} inputs are not a multiple of the group size {group}"
        if why:
            ignore.append(module)
            tensors[name] = ref if kind in NUMPY_DTYPES else dtypes.dequantize(ref)
            if not floats.fullmatch(module):
                notes.append({"name": name, "fallback": why})
            continue
        exact = TRANSCODED.get(kind) == bits and group == GGUF_GROUP and symmetric
        if exact:
            compute, scale_dtype = (lambda r=ref: _transcode(r, args, sch)), "F32"
            notes.append({"name": name, "fallback": f"transcoded {kind} -> int{bits} group {group} (values kept)"})
        else:
            scale_dtype = kind if kind in dtypes.FLOATS else "F32"
            compute = lambda r=ref: _quantize(r, args, sch)  # noqa: E731
            if kind not in NUMPY_DTYPES:
                notes.append({"name": name, "fallback": f"requantized {kind} -> int{bits} group {group} (dequantized "
                                                        "by gguf-py, then round-to-nearest)"})
        key = object()  # this module of this conversion, whatever else the process converts
        for part, (shape, dtype) in _parts(ref, bits, group, symmetric, scale_dtype).items():
            assert part in names
            tensors[f"{module}.{part}"] = lazy.computed(SLOT, key, part, shape, dtype, compute)
    if not any(r.result_dtype == "I32" for r in tensors.values()):
        raise Unsupported(path, f"{model.arch}: no nn.Linear weight to quantize (its layers are another module type, "
                                f"or no input count is a multiple of the group size {group})")
    unused = [m for m in linears if floats.fullmatch(m) and m not in ignore]
    return tensors, sorted(ignore + unused), notes
