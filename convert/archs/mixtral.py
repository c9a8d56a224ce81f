"""Mixtral: llama.cpp runs it as the `llama` arch with experts (convert_hf_to_gguf.py's LlamaModel, which stacks
block_sparse_moe.experts.E.w1/w2/w3 into ffn_gate/down/up_exps); the router is ffn_gate_inp, the Q/K permutation
llama's."""
from dataclasses import replace

from gguf import Keys

from .base import Decoder, Experts, HParam, OnnxSupport
from .llama import LAYOUT, ROPE_FREQS, llama3_rope_freqs
from .llama import HPARAMS, TENSORS

EXPERTS = "block_sparse_moe"  # under each layer
MOE = f"model.layers.{{bid}}.{EXPERTS}"

ARCH = replace(
    LAYOUT, name="mixtral", mlx="mixtral", hf_class="MixtralForCausalLM", qk_permute=True,
    extra_tensors=llama3_rope_freqs,
    derived=(ROPE_FREQS,),
    hparams=HPARAMS + (HParam(Keys.LLM.EXPERT_COUNT, "num_local_experts"),
                       HParam(Keys.LLM.EXPERT_USED_COUNT, "num_experts_per_tok")),
    tensors=tuple(t for t in TENSORS if ".mlp." not in t) + (f"{MOE}.gate.weight",),
    experts={f"{MOE}.experts.{w}.weight": f"{MOE}.experts.{{xid}}.{w}.weight" for w in ("w1", "w2", "w3")},
    # onnxruntime-genai 0.18 has no mixtral type (its library names phimoe only); its generic decoder type
    # runs the builder's graph, portable and ort, generating transformers' greedy tokens (tests/test_onnx_export.py)
    onnx=OnnxSupport(builder=True, genai_type="decoder", decoder=Decoder(experts=Experts(
        router=f"{EXPERTS}.gate", expert=tuple(f"{EXPERTS}.experts.{{xid}}.{w}" for w in ("w1", "w3", "w2")),
        renormalize=lambda cfg: True, count=lambda cfg: cfg["num_local_experts"]))),
)
