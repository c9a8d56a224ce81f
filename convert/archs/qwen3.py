"""Qwen3 (dense): Qwen2's layout without QKV biases, plus RMS norms on Q and K per head; NeoX rope, no permutation."""
from dataclasses import replace

from gguf import MODEL_ARCH

from .base import OnnxSupport
from .llama import QK_NORMS, TENSORS
from .qwen2 import ARCH as QWEN2

ARCH = replace(QWEN2, name="qwen3", mlx="qwen3", hf_class="Qwen3ForCausalLM", gguf_arch=MODEL_ARCH.QWEN3,
               tensors=TENSORS + QK_NORMS, onnx=OnnxSupport(builder=True, genai_type="qwen3", read_back=True,
                                                                   genai_config=True))
