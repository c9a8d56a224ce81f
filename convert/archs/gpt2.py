"""GPT-2: learned position embeddings, LayerNorms with biases, fused c_attn, tied output; llama.cpp's `gpt2` arch.

transformers keeps GPT-2's Conv1D weights as [in, out]; llama.cpp wants [out, in] like every nn.Linear, so the four
projection weights are transposed both ways, as convert_hf_to_gguf.py's GPT2Model does (c_attn stays fused: llama.cpp
splits attn_qkv itself). The config uses GPT-2's own names (n_embd, n_layer ...); `normalize` adds the llama-style
aliases the shared code reads.
"""
from __future__ import annotations

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from .base import F32, Arch, Decoder, HParam, OnnxSupport

HPARAMS = (
    HParam(Keys.LLM.VOCAB_SIZE, "vocab_size"),
    HParam(Keys.LLM.CONTEXT_LENGTH, "n_positions"),
    HParam(Keys.LLM.EMBEDDING_LENGTH, "n_embd"),
    HParam(Keys.LLM.BLOCK_COUNT, "n_layer"),
    HParam(Keys.LLM.FEED_FORWARD_LENGTH, "n_inner"),
    HParam(Keys.Attention.HEAD_COUNT, "n_head"),
    HParam(Keys.Attention.LAYERNORM_EPS, "layer_norm_epsilon", F32),
)

BLOCK = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
TENSORS = ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
           "lm_head.weight") + tuple(f"transformer.h.{{bid}}.{t}.{p}" for t in BLOCK for p in ("weight", "bias"))


def normalize(config: dict) -> dict:
    cfg = dict(config)
    cfg["n_inner"] = cfg.get("n_inner") or 4 * cfg["n_embd"]  # GPT2MLP's default
    cfg.setdefault("tie_word_embeddings", True)  # PretrainedConfig's default, so config.json leaves it out
    cfg.update(num_hidden_layers=cfg["n_layer"], num_attention_heads=cfg["n_head"], num_key_value_heads=cfg["n_head"],
               hidden_size=cfg["n_embd"], intermediate_size=cfg["n_inner"], head_dim=cfg["n_embd"] // cfg["n_head"],
               max_position_embeddings=cfg["n_positions"])
    return cfg


class Transpose:
    """Conv1D [in, out] <-> Linear [out, in]; biases (1-D) pass unchanged. Its own inverse."""

    def __call__(self, w: np.ndarray, cfg: dict) -> np.ndarray:
        return np.ascontiguousarray(w.T)

    @staticmethod
    def shape(shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(reversed(shape))


CONV1D = {k: Transpose() for k in (MODEL_TENSOR.ATTN_QKV, MODEL_TENSOR.ATTN_OUT, MODEL_TENSOR.FFN_UP,
                                   MODEL_TENSOR.FFN_DOWN)}

# onnxruntime-genai's gpt2 type does not load this graph ("Model input was not found"); its generic decoder type runs it
DECODER = Decoder(embed="transformer.wte", positions="transformer.wpe", layers="transformer.h",
                  attention=("attn", "c_proj"), final_norm="transformer.ln_f", conv1d=True, qkv=("c_attn",) * 3,
                  mlp=(None, "c_fc", "c_proj"), layer_norm=True, block_norms=("ln_1", None, "ln_2", None),
                  norm_eps=lambda cfg: cfg["layer_norm_epsilon"],
                  activation=lambda cfg: cfg.get("activation_function", "gelu_new"))

ARCH = Arch(
    name="gpt2", hf_class="GPT2LMHeadModel", gguf_arch=MODEL_ARCH.GPT2, hparams=HPARAMS, tensors=TENSORS,
    normalize=normalize, to_gguf=CONV1D, from_gguf=CONV1D, hf_defaults={"activation_function": "gelu_new"},
    onnx=OnnxSupport(builder=True, genai_type="decoder", optimum=(), decoder=DECODER),
)
