"""Qwen3-MoE: Qwen3's attention (Q/K norms, no biases) with routed experts only, stacked into ffn_*_exps as
convert_hf_to_gguf.py's Qwen3MoeModel does. llama.cpp's qwen3moe always renormalises the top-k routing weights."""
from dataclasses import replace

from gguf import MODEL_ARCH

from .base import Decoder, OnnxSupport
from .llama import HPARAMS, QK_NORMS
from .qwen2_moe import ATTENTION, EXPERT_HPARAMS, EXPERTS, MLP, T5_NAMES, experts
from .qwen3 import ARCH as QWEN3

ARCH = replace(
    QWEN3, name="qwen3_moe", mlx="qwen3_moe", hf_class="Qwen3MoeForCausalLM", gguf_arch=MODEL_ARCH.QWEN3MOE,
    hparams=HPARAMS + EXPERT_HPARAMS, tensors=ATTENTION + QK_NORMS + (f"{MLP}.gate.weight",),
    experts=EXPERTS, t5_names=T5_NAMES, hf_defaults={**QWEN3.hf_defaults, "norm_topk_prob": True},
    onnx=OnnxSupport(builder=True, genai_type="decoder", read_back=True, decoder=Decoder(experts=experts())),
)
