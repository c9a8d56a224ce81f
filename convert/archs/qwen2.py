"""Qwen2 / Qwen2.5: QKV biases, NeoX-style rope in llama.cpp too, so no Q/K permutation."""
from dataclasses import replace

from gguf import MODEL_ARCH

from .base import OnnxSupport
from .llama import LAYOUT

ARCH = replace(LAYOUT, name="qwen2", mlx="qwen2", hf_class="Qwen2ForCausalLM", gguf_arch=MODEL_ARCH.QWEN2,
               onnx=OnnxSupport(builder=True, genai_type="qwen2", read_back=True, genai_config=True,
                                window_switch="use_sliding_window"))
