"""Gemma 3 text (Gemma3ForCausalLM, model_type gemma3_text): Gemma 2's layout plus per-head Q/K RMS norms (also
applied as 1 + w), no attention soft-capping, and local layers with their own rope base (rope_local_base_freq)
between global ones every sliding_window_pattern-th layer. Keys as convert_hf_to_gguf.py's Gemma3Model writes them,
plus the pattern itself, which Gemma3Model leaves to llama.cpp's default (6, the real models' value): written here
so a config with another pattern still runs as transformers runs it (llama.cpp reads the key when present).
Linear rope scaling (the 4B-27B checkpoints' factor 8) applies to the global layers only, in both runtimes. The
query scale as for Gemma 2 (the 27B shape has 62 layers here).

Gemma3Model also trims token_embd to the tokenizer's length when the checkpoint pads the vocabulary beyond it;
here the embedding keeps the config's vocab_size rows and the GGUF vocabulary is padded to match instead.

The ONNX builder computes Gemma3TextModel's steps: Gemma 2's row (embedding scale, 1 + w norms, post norms, query
scale, caps where the config sets them) with the per-head Q/K norms, and the local layers' window and default rope at
rope_local_base_freq (a second cos/sin cache with --ops ort). onnxruntime-genai runs Gemma3ForCausalLM as its
`gemma3_text` type (its `gemma3` is the vision-language model)."""
from __future__ import annotations

from dataclasses import replace

from gguf import MODEL_ARCH, Keys

from .base import F32, STR, HParam, OnnxSupport, rope
from .gemma import ARCH as GEMMA
from .gemma import TENSORS
from .gemma2 import ARCH as GEMMA2
from .gemma2 import DECODER as GEMMA2_DECODER
from .gemma2 import FFN_NORMS, checked_query_scalar, llama_cpp_query_scalar
from .llama import QK_NORMS

HPARAMS = tuple(h for h in GEMMA2.hparams if h.gguf != Keys.LLM.ATTN_LOGIT_SOFTCAPPING) + (
    HParam(Keys.Rope.FREQ_BASE_SWA, "rope_local_base_freq", F32),
    HParam(Keys.Attention.SLIDING_WINDOW_PATTERN, "sliding_window_pattern"),
)
LAYERS_27B = 62
PATTERN_DEFAULT, LOCAL_BASE_DEFAULT = 6, 10000.0  # Gemma3TextConfig's sliding_window_pattern and rope_local_base_freq


def normalize(config: dict) -> dict:
    """Gemma's defaults, the query scale checked, and the pattern from layer_types when a config gives only those
    (transformers 5)."""
    cfg = checked_query_scalar(config, LAYERS_27B)
    if cfg.get("sliding_window_pattern") is None and cfg.get("layer_types"):
        cfg["sliding_window_pattern"] = cfg["layer_types"].index("full_attention") + 1 \
            if "full_attention" in cfg["layer_types"] else len(cfg["layer_types"]) + 1
    return cfg


def layer_types(cfg: dict) -> list[str]:
    """Every sliding_window_pattern-th layer global, the others local, as Gemma3TextConfig fills `layer_types`."""
    pattern = cfg.get("sliding_window_pattern") or PATTERN_DEFAULT
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(cfg["num_hidden_layers"])]


DECODER = replace(GEMMA2_DECODER, layer_types=layer_types,
                  local_rope_theta=lambda cfg: cfg.get("rope_local_base_freq", LOCAL_BASE_DEFAULT))


def linear_rope_kv(cfg: dict) -> list:
    """The rope scaling keys convert_hf_to_gguf.py's TextModel writes for a linear rope_scaling."""
    params = rope(cfg)
    if params.get("rope_type") != "linear":
        return []
    return [(Keys.Rope.SCALING_TYPE, "linear", STR), (Keys.Rope.SCALING_FACTOR, params["factor"], F32)]


def hf_from_gguf(cfg: dict, kv: dict, tensors: dict) -> dict:
    """A rebuilt config's query scale (llama.cpp's) and linear rope scaling (from the keys linear_rope_kv writes)."""
    out = {"query_pre_attn_scalar": llama_cpp_query_scalar(GEMMA.normalize(cfg), LAYERS_27B)}
    if kv.get(Keys.Rope.SCALING_TYPE.format(arch="gemma3")) == "linear":
        out["rope_scaling"] = {"rope_type": "linear", "factor": kv[Keys.Rope.SCALING_FACTOR.format(arch="gemma3")]}
    return out


ARCH = replace(GEMMA2, name="gemma3_text", mlx="gemma3_text",
               hf_class="Gemma3ForCausalLM", gguf_arch=MODEL_ARCH.GEMMA3,
               hparams=HPARAMS, tensors=TENSORS + FFN_NORMS + QK_NORMS, normalize=normalize, extra_kv=linear_rope_kv,
               hf_from_gguf=hf_from_gguf, onnx=OnnxSupport(builder=True, genai_type="gemma3_text", read_back=True, decoder=DECODER))
