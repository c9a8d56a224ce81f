"""Mistral: llama.cpp runs it as the `llama` arch (same tensors, same Q/K permutation); only the HF side differs."""
from dataclasses import replace

from .base import OnnxSupport
from .llama import LAYOUT, ROPE_FREQS, llama3_rope_freqs

ARCH = replace(LAYOUT, name="mistral", mlx="llama", hf_class="MistralForCausalLM", qk_permute=True,
               extra_tensors=llama3_rope_freqs, derived=(ROPE_FREQS,),
               onnx=OnnxSupport(builder=True, genai_type="mistral", read_back=True, sliding_window_everywhere=True,
                                genai_config=True))
