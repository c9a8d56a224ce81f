"""Llama (2, 3, 3.1, 3.2 with llama3 rope scaling), TinyLlama, Yi: llama.cpp's `llama` arch.

llama.cpp rotates Q/K pairs interleaved (GPT-J style) while transformers rotates halves (NeoX style), so Q and K
rows are permuted on the way to GGUF and back on the way out, as convert_hf_to_gguf.py's LlamaModel.permute does.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, TENSOR_NAMES, Keys

from .base import F32, U32, Arch, HParam, OnnxSupport, rope

HPARAMS = (
    HParam(Keys.LLM.VOCAB_SIZE, "vocab_size"),
    HParam(Keys.LLM.CONTEXT_LENGTH, "max_position_embeddings"),
    HParam(Keys.LLM.EMBEDDING_LENGTH, "hidden_size"),
    HParam(Keys.LLM.BLOCK_COUNT, "num_hidden_layers"),
    HParam(Keys.LLM.FEED_FORWARD_LENGTH, "intermediate_size"),
    HParam(Keys.Attention.HEAD_COUNT, "num_attention_heads"),
    HParam(Keys.Attention.HEAD_COUNT_KV, "num_key_value_heads"),
    HParam(Keys.Rope.FREQ_BASE, "rope_theta", F32),
    HParam(Keys.Attention.LAYERNORM_RMS_EPS, "rms_norm_eps", F32),
    HParam(Keys.Rope.DIMENSION_COUNT, "head_dim", U32),
    HParam(Keys.Attention.KEY_LENGTH, "head_dim", U32),
    HParam(Keys.Attention.VALUE_LENGTH, "head_dim", U32),
)

BLOCK = ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
TENSORS = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight") + tuple(
    f"model.layers.{{bid}}.{t}.weight" for t in BLOCK)
QKV_BIASES = tuple(f"model.layers.{{bid}}.self_attn.{p}_proj.bias" for p in "qkv")
QK_NORMS = tuple(f"model.layers.{{bid}}.self_attn.{p}_norm.weight" for p in "qk")  # per-head (qwen3, gemma3)
ROPE_FREQS = TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight"  # llama3 rope scaling's divisors (GGUF only)


def normalize(config: dict) -> dict:
    cfg = dict(config)
    cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    if cfg.get("head_dim") is None:
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg["rope_theta"] = rope(cfg)["rope_theta"]
    return cfg


def llama3_rope_freqs(config: dict) -> dict[str, np.ndarray]:
    """llama.cpp applies llama3 rope scaling through a `rope_freqs` tensor of per-frequency divisors, computed as
    convert_hf_to_gguf.py does (float32 throughout)."""
    params = rope(config)
    if params.get("rope_type", "").lower() != "llama3":
        return {}
    cfg = normalize(config)
    dim, base = cfg["head_dim"], params["rope_theta"]
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_ctx = params.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    freqs = (1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))).astype(np.float32)
    out = []
    for freq in freqs:
        wavelen = np.float32(2 * math.pi) / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return {ROPE_FREQS: np.asarray(out, dtype=np.float32)}


# the llama layout other families start from (qwen2, gemma, phi3, starcoder2 ...): no Q/K permutation, which a
# family opts into when llama.cpp's converter for it permutes
LAYOUT = Arch(
    name="llama", hf_class="LlamaForCausalLM", gguf_arch=MODEL_ARCH.LLAMA, hparams=HPARAMS,
    tensors=TENSORS + QKV_BIASES, normalize=normalize, hf_defaults={"hidden_act": "silu"},
)
ARCH = replace(LAYOUT, mlx="llama", qk_permute=True, extra_tensors=llama3_rope_freqs, derived=(ROPE_FREQS,),
               onnx=OnnxSupport(builder=True, genai_type="llama", read_back=True, genai_config=True))
