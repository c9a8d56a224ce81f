"""Phi-3 / Phi-3.5 / Phi-4-mini (Phi3ForCausalLM): fused qkv_proj and gate_up_proj, which llama.cpp keeps fused
(attn_qkv, ffn_up of twice the width) in the same row order, so no transform; NeoX rope. LongRoPE (rope_scaling type
longrope, or "su" as older configs say) becomes the rope_factors_long / rope_factors_short tensors and the
rope.scaling.attn_factor key, as convert_hf_to_gguf.py's Phi3MiniModel writes them; llama.cpp picks the long factors
when its context is longer than the original one, as transformers does by sequence length.

Phi3MiniModel writes sliding_window 0 when the config has none; llama.cpp's phi3 ignores sliding windows either way,
so the key is left out then.

The ONNX builder computes Phi3Model's steps: qkv_proj and gate_up_proj kept fused and split in the graph, the
rotary embedding on the first int(head_dim * partial_rotary_factor) dimensions of each head, LongRoPE's short or long
frequencies (and its attention factor) picked inside the graph by the total sequence length against
original_max_position_embeddings (GroupQueryAttention gets the chosen pair of caches with --ops ort), and the sliding
window on every layer, as transformers applies it."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, TENSOR_NAMES, Keys
from modelport.formats.errors import BadInput

from .base import F32, U32, Decoder, HParam, OnnxSupport, rope
from .llama import LAYOUT
from .llama import HPARAMS as LLAMA_HPARAMS

HPARAMS = tuple(h for h in LLAMA_HPARAMS if h.gguf != Keys.Rope.DIMENSION_COUNT) + (
    HParam(Keys.Rope.SCALING_ORIG_CTX_LEN, "original_max_position_embeddings"),
    HParam(Keys.Attention.SLIDING_WINDOW, "sliding_window"),
)
BLOCK = ("input_layernorm", "post_attention_layernorm", "self_attn.qkv_proj", "self_attn.o_proj",
         "mlp.gate_up_proj", "mlp.down_proj")
TENSORS = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight") + tuple(
    f"model.layers.{{bid}}.{t}.weight" for t in BLOCK)
FACTORS = {"long_factor": MODEL_TENSOR.ROPE_FACTORS_LONG, "short_factor": MODEL_TENSOR.ROPE_FACTORS_SHORT}
FACTOR_NAMES = tuple(TENSOR_NAMES[k] + ".weight" for k in FACTORS.values())


def _rope_dims(cfg: dict) -> int:
    """Rotated dimensions per head (Phi-4-mini rotates 3/4 of each), as Phi3MiniModel computes them."""
    return int(rope(cfg).get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) * cfg["hidden_size"]) \
        // cfg["num_attention_heads"]


def _longrope(cfg: dict) -> dict | None:
    params = rope(cfg)
    return params if params.get("rope_type", "").lower() in ("longrope", "su") and params.get("long_factor") \
        else None


def _default_attn_factor(cfg: dict, params: dict) -> float:
    """transformers' longrope attention factor when the config sets none (Phi3MiniModel's formula)."""
    orig = params.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
    scale = cfg["max_position_embeddings"] / orig
    return math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0


def extra_kv(cfg: dict) -> list:
    kv = [(Keys.Rope.DIMENSION_COUNT, _rope_dims(cfg), U32)]
    if (params := _longrope(cfg)) is not None:
        factor = params.get("attention_factor") or _default_attn_factor(cfg, params)
        kv.append((Keys.Rope.SCALING_ATTN_FACTOR, factor, F32))
    return kv


def hf_from_gguf(cfg: dict, kv: dict, tensors: dict) -> dict:
    """A rebuilt config's partial rotation (Phi-4-mini) and LongRoPE, from the key and tensors Phi3MiniModel writes."""
    out = {}
    dims = kv.get(Keys.Rope.DIMENSION_COUNT.format(arch="phi3"))
    if dims and dims * cfg["num_attention_heads"] != cfg["hidden_size"]:
        out["partial_rotary_factor"] = dims * cfg["num_attention_heads"] / cfg["hidden_size"]
    if all(name in tensors for name in FACTOR_NAMES):
        params = {"type": "longrope", **{key: tensors[TENSOR_NAMES[kind] + ".weight"].read().tolist()
                                         for key, kind in FACTORS.items()}}
        factor = kv.get(Keys.Rope.SCALING_ATTN_FACTOR.format(arch="phi3"))
        if factor is not None and np.float32(factor) != np.float32(_default_attn_factor(cfg, params)):
            params["attention_factor"] = factor
        out["rope_scaling"] = params
    return out


def rope_factors(config: dict) -> dict[str, np.ndarray]:
    """LongRoPE's per-frequency divisors, one F32 tensor each for long and short contexts."""
    cfg = LAYOUT.normalize(config)
    params = _longrope(cfg)
    if params is None:
        return {}
    out = {TENSOR_NAMES[kind] + ".weight": np.asarray(params[key], dtype=np.float32) for key, kind in FACTORS.items()}
    if any(len(v) != _rope_dims(cfg) // 2 for v in out.values()):
        raise BadInput("config.json", f"rope_scaling long_factor and short_factor need {_rope_dims(cfg) // 2} "
                                      "entries each (rotated dimensions / 2)")
    return out


DECODER = Decoder(qkv=("qkv_proj",) * 3, mlp=("gate_up_proj", "gate_up_proj", "down_proj"))

ARCH = replace(LAYOUT, name="phi3", mlx="phi3", hf_class="Phi3ForCausalLM", gguf_arch=MODEL_ARCH.PHI3, hparams=HPARAMS,
               tensors=TENSORS, extra_tensors=rope_factors, extra_kv=extra_kv,
               derived=FACTOR_NAMES, hf_from_gguf=hf_from_gguf,
               onnx=OnnxSupport(builder=True, genai_type="phi3", read_back=True, sliding_window_everywhere=True,
                                decoder=DECODER, genai_config=True))
