"""IBM Granite 3.x dense (GraniteForCausalLM): llama's layout and Q/K permutation (llama.cpp's GraniteModel is a
LlamaModel), plus four scalars transformers applies and llama.cpp reads from keys, written as GraniteModel writes
them: embeddings times `embedding_multiplier` ({arch}.embedding_scale), each block's residual branch times
`residual_multiplier` ({arch}.residual_scale), attention scores times `attention_multiplier` instead of
1/sqrt(head_dim) ({arch}.attention.scale), logits divided by `logits_scaling` ({arch}.logit_scale). The ONNX builder
applies the same four (transformers' GraniteConfig defaults: 1.0 each, the attention scale included)."""
from dataclasses import replace

from gguf import MODEL_ARCH, Keys

from .base import F32, Decoder, HParam, OnnxSupport
from .llama import LAYOUT, ROPE_FREQS, llama3_rope_freqs

MULTIPLIERS = (
    HParam(Keys.LLM.EMBEDDING_SCALE, "embedding_multiplier", F32),
    HParam(Keys.LLM.RESIDUAL_SCALE, "residual_multiplier", F32),
    HParam(Keys.Attention.SCALE, "attention_multiplier", F32),
    HParam(Keys.LLM.LOGIT_SCALE, "logits_scaling", F32),
)

ARCH = replace(LAYOUT, name="granite", mlx="granite",
               hf_class="GraniteForCausalLM", gguf_arch=MODEL_ARCH.GRANITE, qk_permute=True,
               hparams=LAYOUT.hparams + MULTIPLIERS, extra_tensors=llama3_rope_freqs, derived=(ROPE_FREQS,),
               onnx=OnnxSupport(builder=True, genai_type="granite", read_back=True, decoder=Decoder(
                   embedding_scale=lambda cfg: cfg.get("embedding_multiplier"),
                   residual_scale=lambda cfg: cfg.get("residual_multiplier"),
                   attention_scale=lambda cfg: cfg.get("attention_multiplier", 1.0),
                   logit_divisor=lambda cfg: cfg.get("logits_scaling")), genai_config=True))
