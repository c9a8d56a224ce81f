"""Qwen2 / Qwen2.5: QKV biases, NeoX-style rope in llama.cpp too, so no Q/K permutation."""
from dataclasses import replace

from gguf import MODEL_ARCH

from .llama import ARCH as LLAMA

ARCH = replace(LLAMA, name="qwen2", hf_class="Qwen2ForCausalLM", gguf_arch=MODEL_ARCH.QWEN2, to_gguf={},
               from_gguf={}, extra_tensors=lambda cfg: {}, derived=())
