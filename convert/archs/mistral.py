"""Mistral: llama.cpp runs it as the `llama` arch (same tensors, same Q/K permutation); only the HF side differs."""
from dataclasses import replace

from .llama import ARCH as LLAMA

ARCH = replace(LLAMA, name="mistral", hf_class="MistralForCausalLM")
