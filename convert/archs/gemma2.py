"""Gemma 2: gemma's (1 + w) norms plus a norm after attention and around the feed-forward, attention and final logit
soft-capping, and local (sliding-window) layers alternating with global ones, local first, which llama.cpp assumes
for the arch (its default sliding_window_pattern of 2), as convert_hf_to_gguf.py's Gemma2Model writes it.

llama.cpp scales queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B shape) rather than reading
query_pre_attn_scalar, which the real configs set to just that."""
from dataclasses import replace

from gguf import MODEL_ARCH, Keys

from .base import F32, HParam
from .gemma import ARCH as GEMMA
from .gemma import TENSORS

HPARAMS = GEMMA.hparams + (
    HParam(Keys.LLM.ATTN_LOGIT_SOFTCAPPING, "attn_logit_softcapping", F32),
    HParam(Keys.LLM.FINAL_LOGIT_SOFTCAPPING, "final_logit_softcapping", F32),
    HParam(Keys.Attention.SLIDING_WINDOW, "sliding_window"),
)
FFN_NORMS = tuple(f"model.layers.{{bid}}.{n}_feedforward_layernorm.weight" for n in ("pre", "post"))

ARCH = replace(GEMMA, name="gemma2", hf_class="Gemma2ForCausalLM", gguf_arch=MODEL_ARCH.GEMMA2, hparams=HPARAMS,
               tensors=TENSORS + FFN_NORMS, hf_defaults={"hidden_activation": "gelu_pytorch_tanh"})
