"""Gemma 2: gemma's (1 + w) norms plus a norm after attention and around the feed-forward, attention and final logit
soft-capping, and local (sliding-window) layers alternating with global ones, local first, which llama.cpp assumes
for the arch (its default sliding_window_pattern of 2), as convert_hf_to_gguf.py's Gemma2Model writes it.

transformers scales queries by 1/sqrt(query_pre_attn_scalar); llama.cpp reads no key for it and uses
1/sqrt(hidden / heads) for the 27B shape (told by its layer count), else 1/sqrt(head_dim), which is what the real
configs say. A config that says otherwise is refused, and a config rebuilt from a GGUF gets llama.cpp's value.

The ONNX builder computes Gemma2Model's steps: gemma's embedding scale and (1 + w) norms, queries scaled by
1/sqrt(query_pre_attn_scalar), scores and logits soft-capped (GroupQueryAttention's `softcap` with --ops ort), the
norm after attention and the pair around the MLP, `hidden_activation`, and the local layers' window."""
from __future__ import annotations

from dataclasses import replace

from gguf import MODEL_ARCH, Keys

from modelport.formats.errors import Unsupported

from .base import F32, HParam, OnnxSupport
from .gemma import ARCH as GEMMA
from .gemma import DECODER as GEMMA_DECODER
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


def layer_types(cfg: dict) -> list[str]:
    """Local layers first, then alternating, as Gemma2Config fills `layer_types` for a config that has none."""
    return [("sliding_attention", "full_attention")[i % 2] for i in range(cfg["num_hidden_layers"])]


DECODER = replace(GEMMA_DECODER,
                  attention_scale=lambda cfg: cfg.get("query_pre_attn_scalar", QUERY_SCALAR_DEFAULT) ** -0.5,
                  attention_softcap=lambda cfg: cfg.get("attn_logit_softcapping"),
                  logit_softcap=lambda cfg: cfg.get("final_logit_softcapping"),
                  activation=lambda cfg: cfg.get("hidden_activation") or "gelu_pytorch_tanh",
                  block_norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                               "post_feedforward_layernorm"), layer_types=layer_types)

ARCH = replace(GEMMA, name="gemma2", mlx="gemma2",
               hf_class="Gemma2ForCausalLM", gguf_arch=MODEL_ARCH.GEMMA2, hparams=HPARAMS,
               tensors=TENSORS + FFN_NORMS, normalize=lambda config: checked_query_scalar(config, LAYERS_27B),
               hf_from_gguf=lambda cfg, kv, tensors: {
                   "query_pre_attn_scalar": llama_cpp_query_scalar(GEMMA.normalize(cfg), LAYERS_27B)},
               hf_defaults={"hidden_activation": "gelu_pytorch_tanh"},
               onnx=OnnxSupport(builder=True, genai_type="gemma2", read_back=True, decoder=DECODER,
                                genai_config=True))
