"""toyllama: llama's family knowledge under a model_type of its own, registered from outside modelport."""
from dataclasses import replace

from modelport.convert.archs.llama import ARCH as LLAMA

ARCH = replace(LLAMA, name="toyllama", hf_class="ToyLlamaForCausalLM", also_hf_types=())
