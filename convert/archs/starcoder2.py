"""StarCoder2: llama's layout with biases everywhere, LayerNorms (with biases) instead of RMS norms, a GELU MLP
(c_fc/c_proj) and NeoX rope in llama.cpp too, so no Q/K permutation; llama.cpp's `starcoder2` arch.

convert_hf_to_gguf.py's StarCoder2Model is the generic TextModel: the llama keys with `norm_epsilon` as the
LayerNorm epsilon. The sliding window (4096) is not written: llama.cpp's starcoder2 attends to the whole context.

The ONNX builder computes Starcoder2Model's steps: LayerNorms with their biases (LayerNormalization, or
SkipLayerNormalization with --ops ort), biases on every projection, the ungated c_fc -> hidden_act -> c_proj MLP, and
the sliding window on every layer, as transformers applies it. onnxruntime-genai has no starcoder2 builder; its
generic `decoder` type runs the graph (greedy tokens as transformers').
"""
from __future__ import annotations

from dataclasses import replace

from gguf import MODEL_ARCH, Keys

from .base import F32, Decoder, HParam, OnnxSupport
from .llama import LAYOUT
from .llama import HPARAMS as LLAMA_HPARAMS
from .llama import normalize as llama_normalize

HPARAMS = tuple(h for h in LLAMA_HPARAMS if h.gguf != Keys.Attention.LAYERNORM_RMS_EPS) + (
    HParam(Keys.Attention.LAYERNORM_EPS, "norm_epsilon", F32),)

BLOCK = ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
         "self_attn.o_proj", "mlp.c_fc", "mlp.c_proj")
TENSORS = ("model.embed_tokens.weight", "model.norm.weight", "model.norm.bias", "lm_head.weight") + tuple(
    f"model.layers.{{bid}}.{t}.{p}" for t in BLOCK for p in ("weight", "bias"))


def normalize(config: dict) -> dict:
    cfg = llama_normalize(config)
    cfg.setdefault("tie_word_embeddings", True)  # Starcoder2Config's default, left out of config.json
    return cfg


DECODER = Decoder(activation=lambda cfg: cfg.get("hidden_act", "gelu_pytorch_tanh"), mlp=(None, "c_fc", "c_proj"),
                  layer_norm=True, norm_eps=lambda cfg: cfg["norm_epsilon"])

ARCH = replace(LAYOUT, name="starcoder2", mlx="starcoder2",
               hf_class="Starcoder2ForCausalLM", gguf_arch=MODEL_ARCH.STARCODER2,
               hparams=HPARAMS, tensors=TENSORS, normalize=normalize, hf_defaults={"hidden_act": "gelu_pytorch_tanh"},
               onnx=OnnxSupport(builder=True, genai_type="decoder", sliding_window_everywhere=True, decoder=DECODER))
