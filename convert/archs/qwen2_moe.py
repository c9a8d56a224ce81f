"""Qwen1.5-MoE / Qwen2-MoE: Qwen2's attention (QKV biases, no permutation) with routed experts stacked into
ffn_*_exps and one shared expert behind a sigmoid gate (ffn_*_shexp, ffn_gate_inp_shexp), as convert_hf_to_gguf.py's
Qwen2MoeModel writes them. llama.cpp's qwen2moe never renormalises the top-k routing weights: norm_topk_prob false."""
from dataclasses import replace

from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from .base import Decoder, Experts, HParam, OnnxSupport
from .llama import HPARAMS, QKV_BIASES, TENSORS
from .qwen2 import ARCH as QWEN2

MLP = "model.layers.{bid}.mlp"
PROJS = ("gate_proj", "up_proj", "down_proj")
EXPERT_HPARAMS = (
    HParam(Keys.LLM.EXPERT_COUNT, "num_experts"),
    HParam(Keys.LLM.EXPERT_USED_COUNT, "num_experts_per_tok"),
    HParam(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, "moe_intermediate_size"),
)
T5_NAMES = {"num_experts": "num_local_experts"}  # transformers 5 saves the expert count under mixtral's name
ATTENTION = tuple(t for t in TENSORS if ".mlp." not in t)
EXPERTS = {f"{MLP}.experts.{p}.weight": f"{MLP}.experts.{{xid}}.{p}.weight" for p in PROJS}


def experts(**shared) -> Experts:
    """The graph builder's view of the Qwen MoE block (transformers' Qwen2MoeSparseMoeBlock / Qwen3MoeSparseMoeBlock):
    norm_topk_prob says whether the top-k weights are renormalised."""
    return Experts(router="mlp.gate", expert=tuple(f"mlp.experts.{{xid}}.{p}" for p in PROJS),
                   renormalize=lambda cfg: bool(cfg.get("norm_topk_prob")), count=lambda cfg: cfg["num_experts"],
                   every_layer=lambda cfg: not cfg.get("mlp_only_layers") and cfg.get("decoder_sparse_step", 1) == 1,
                   **shared)


def _gate_row(w, cfg):
    """llama-quantize writes the (1, n_embd) shared-expert gate 1-D (ggml_n_dims); HF's Linear(n_embd, 1) is a row."""
    return w.reshape(1, -1)


_gate_row.shape = lambda shape: (1, shape[-1])

ARCH = replace(
    QWEN2, name="qwen2_moe", mlx="qwen2_moe", hf_class="Qwen2MoeForCausalLM", gguf_arch=MODEL_ARCH.QWEN2MOE,
    hparams=HPARAMS + EXPERT_HPARAMS + (
        HParam(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH, "shared_expert_intermediate_size"),),
    tensors=ATTENTION + QKV_BIASES + (f"{MLP}.gate.weight", f"{MLP}.shared_expert_gate.weight") + tuple(
        f"{MLP}.shared_expert.{p}.weight" for p in PROJS),
    experts=EXPERTS, from_gguf={MODEL_TENSOR.FFN_GATE_INP_SHEXP: _gate_row}, t5_names=T5_NAMES,
    hf_defaults={**QWEN2.hf_defaults, "norm_topk_prob": False},
    # onnxruntime-genai has no qwen2_moe / qwen3_moe type; its generic decoder type runs the builder's graph (greedy
    # tokens equal transformers', tests/test_onnx_export.py). Our graphs read back by their names; read_back stays
    # off: optimum-onnx 0.1 exports no qwen2_moe (nor mixtral), so the walk of exported graphs has no shared expert to
    # read (qwen3_moe's exports read back)
    onnx=OnnxSupport(builder=True, genai_type="decoder", decoder=Decoder(experts=experts(
        shared=tuple(f"mlp.shared_expert.{p}" for p in PROJS), shared_gate="mlp.shared_expert_gate"))),
)
