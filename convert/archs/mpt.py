"""MPT: ALiBi instead of position embeddings, fused Wqkv optionally clipped (clip_qkv), LayerNorms without biases, no
biases anywhere, tied output; llama.cpp's `mpt` arch, with the keys convert_hf_to_gguf.py's MPTModel writes
(clamp_kqv, max_alibi_bias). The attention settings live in the nested `attn_config`, read by dotted hparam paths.

transformers' MptModel always applies ALiBi (bias max 8) and scales scores by 1/sqrt(head_dim): MPT variants
without ALiBi (learned positions) or with another softmax_scale are refused, since the reference cannot run them.
"""
from __future__ import annotations

from gguf import MODEL_ARCH, Keys

from modelport.formats.errors import Unsupported

from .base import F32, Arch, Decoder, HParam, OnnxSupport

HPARAMS = (
    HParam(Keys.LLM.VOCAB_SIZE, "vocab_size"),
    HParam(Keys.LLM.CONTEXT_LENGTH, "max_seq_len"),
    HParam(Keys.LLM.EMBEDDING_LENGTH, "d_model"),
    HParam(Keys.LLM.BLOCK_COUNT, "n_layers"),
    HParam(Keys.LLM.FEED_FORWARD_LENGTH, "intermediate_size"),
    HParam(Keys.Attention.HEAD_COUNT, "n_heads"),
    HParam(Keys.Attention.LAYERNORM_EPS, "layer_norm_epsilon", F32),
    HParam(Keys.Attention.CLAMP_KQV, "attn_config.clip_qkv", F32),
    HParam(Keys.Attention.MAX_ALIBI_BIAS, "attn_config.alibi_bias_max", F32),
)

BLOCK = ("norm_1", "attn.Wqkv", "attn.out_proj", "norm_2", "ffn.up_proj", "ffn.down_proj")
TENSORS = ("transformer.wte.weight", "transformer.norm_f.weight", "lm_head.weight") + tuple(
    f"transformer.blocks.{{bid}}.{t}.weight" for t in BLOCK)


def normalize(config: dict) -> dict:
    cfg = dict(config)
    attn = {"alibi": True, "alibi_bias_max": 8, **(cfg.get("attn_config") or {})}  # MptAttentionConfig's defaults
    if not attn["alibi"] or attn.get("softmax_scale") is not None:
        raise Unsupported("config.json", "mpt without ALiBi or with a softmax_scale: transformers' MPT cannot run it")
    cfg["attn_config"] = attn
    cfg.setdefault("layer_norm_epsilon", 1e-5)
    cfg.setdefault("tie_word_embeddings", True)
    cfg["intermediate_size"] = cfg.get("expansion_ratio", 4) * cfg["d_model"]
    cfg.update(num_hidden_layers=cfg["n_layers"], num_attention_heads=cfg["n_heads"],
               num_key_value_heads=cfg["n_heads"], hidden_size=cfg["d_model"],
               head_dim=cfg["d_model"] // cfg["n_heads"], max_position_embeddings=cfg["max_seq_len"])
    return cfg


# onnxruntime-genai has no mpt type; its generic decoder type runs the portable graph
DECODER = Decoder(embed="transformer.wte", layers="transformer.blocks", attention=("attn", "out_proj"),
                  final_norm="transformer.norm_f", qkv=("Wqkv",) * 3, mlp_module="ffn",
                  mlp=(None, "up_proj", "down_proj"), layer_norm=True, block_norms=("norm_1", None, "norm_2", None),
                  norm_eps=lambda cfg: cfg["layer_norm_epsilon"],
                  activation=lambda cfg: "gelu",  # MptMLP's exact nn.GELU
                  alibi_bias_max=lambda cfg: cfg["attn_config"]["alibi_bias_max"],
                  clip_qkv=lambda cfg: cfg["attn_config"].get("clip_qkv"))

ARCH = Arch(name="mpt", hf_class="MptForCausalLM", gguf_arch=MODEL_ARCH.MPT, hparams=HPARAMS, tensors=TENSORS,
            normalize=normalize,
            onnx=OnnxSupport(builder=True, genai_type="decoder", optimum=(), decoder=DECODER))
