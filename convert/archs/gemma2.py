"""Gemma 2: gemma's (1 + w) norms plus a norm after attention and around the feed-forward, attention and final logit
soft-capping, and local (sliding-window) layers alternating with global ones, local first, which llama.cpp assumes
for the arch (its default sliding_window_pattern of 2), as convert_hf_to_gguf.py's Gemma2Model writes it.

transformers scales queries by 1/sqrt(query_pre_attn_scalar); llama.cpp reads no key for it and uses
1/sqrt(hidden / heads) for the 27B shape (told by its layer count), else 1/sqrt(head_dim), which is what the real
configs say. A config that says otherwise is refused, and a config rebuilt from a GGUF gets llama.cpp's value."""
from __future__ import annotations

from dataclasses import replace

from gguf import MODEL_ARCH, Keys

from modelport.formats.errors import Unsupported

from .base import F32, ROPE_BY_LENGTH, HParam, Limit, OnnxSupport
from .gemma import ARCH as GEMMA
from .gemma import TENSORS

HPARAMS = GEMMA.hparams + (
    HParam(Keys.LLM.ATTN_LOGIT_SOFTCAPPING, "attn_logit_softcapping", F32),
    HParam(Keys.LLM.FINAL_LOGIT_SOFTCAPPING, "final_logit_softcapping", F32),
    HParam(Keys.Attention.SLIDING_WINDOW, "sliding_window"),
)
FFN_NORMS = tuple(f"model.layers.{{bid}}.{n}_feedforward_layernorm.weight" for n in ("pre", "post"))
LAYERS_27B = 46
QUERY_SCALAR_DEFAULT = 256  # transformers' Gemma2Config / Gemma3TextConfig default


def llama_cpp_query_scalar(cfg: dict, layers_27b: int) -> int:
    """What llama.cpp's load_arch_hparams scales queries by (as 1/sqrt of it), from the normalised config."""
    if cfg["num_hidden_layers"] == layers_27b:
        return cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg["head_dim"]


def checked_query_scalar(config: dict, layers_27b: int) -> dict:
    cfg = GEMMA.normalize(config)
    scalar, expected = cfg.get("query_pre_attn_scalar", QUERY_SCALAR_DEFAULT), llama_cpp_query_scalar(cfg, layers_27b)
    if scalar != expected:
        raise Unsupported("config.json", f"{cfg.get('model_type')} with query_pre_attn_scalar={scalar}: llama.cpp "
                                         f"scales queries by 1/sqrt({expected}) for this shape")
    return cfg


# optimum loads gemma2 with sdpa attention, which leaves the attention soft-capping out
SOFTCAPPING = Limit(lambda cfg: cfg.get("attn_logit_softcapping") is not None, "attn_logit_softcapping",
                    "optimum loads the model with sdpa attention, which leaves the attention soft-capping out")

ARCH = replace(GEMMA, name="gemma2", mlx="gemma2",
               hf_class="Gemma2ForCausalLM", gguf_arch=MODEL_ARCH.GEMMA2, hparams=HPARAMS,
               tensors=TENSORS + FFN_NORMS, normalize=lambda config: checked_query_scalar(config, LAYERS_27B),
               hf_from_gguf=lambda cfg, kv, tensors: {
                   "query_pre_attn_scalar": llama_cpp_query_scalar(GEMMA.normalize(cfg), LAYERS_27B)},
               hf_defaults={"hidden_activation": "gelu_pytorch_tanh"}, onnx=OnnxSupport(optimum=(SOFTCAPPING, ROPE_BY_LENGTH)))
