"""Gemma (1): llama's layout with GELU, tied embeddings scaled by sqrt(hidden) at run time (nothing to convert),
and RMS norms stored as w but applied as (1 + w). llama.cpp's norms multiply by the stored weight, so
convert_hf_to_gguf.py's GemmaModel.modify_tensors adds 1 on the way to GGUF; it is taken off on the way back. Both run in F32, where
(w + 1) - 1 is w to within half an ulp of (w + 1): exact for BF16/F16 sources in practice, a few 1e-8 off for F32.

NeoX-style rope in llama.cpp too, so Q/K are not permuted. GemmaModel also writes add_space_prefix = false and fixed
CodeGemma FIM/EOT token ids; here the prefix flag comes from the tokenizer.model itself (false for Gemma's own), and
llama.cpp finds <end_of_turn> and the FIM tokens by their text, so the fixed ids are left out.

The ONNX builder computes what GemmaModel does: embeddings times sqrt(hidden) rounded to the compute type (its
`normalizer`), norms times (1 + w) in float32, the MLP's `hidden_act` (gelu_pytorch_tanh), the embedding as the head.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR

from .base import Decoder, OnnxSupport
from .llama import LAYOUT
from .llama import BLOCK

# no lm_head: the output is always the embedding (llama.cpp's gemma arch has no output tensor)
TENSORS = ("model.embed_tokens.weight", "model.norm.weight") + tuple(f"model.layers.{{bid}}.{t}.weight" for t in BLOCK)

# every RMS norm of the gemma families (gemma3's per-head Q/K norms too) is applied as (1 + w)
NORMS = (MODEL_TENSOR.ATTN_NORM, MODEL_TENSOR.FFN_NORM, MODEL_TENSOR.OUTPUT_NORM, MODEL_TENSOR.ATTN_POST_NORM,
         MODEL_TENSOR.FFN_PRE_NORM, MODEL_TENSOR.FFN_POST_NORM, MODEL_TENSOR.ATTN_Q_NORM, MODEL_TENSOR.ATTN_K_NORM)
ONE = np.float32(1.0)
TO_GGUF = {k: (lambda w, cfg: w + ONE) for k in NORMS}
FROM_GGUF = {k: (lambda w, cfg: w - ONE) for k in NORMS}

DECODER = Decoder(embedding_scale=lambda cfg: cfg["hidden_size"] ** 0.5, norm_offset=1.0,
                  activation=lambda cfg: cfg.get("hidden_act", "gelu_pytorch_tanh"))

ARCH = replace(LAYOUT, name="gemma", mlx="gemma",
               hf_class="GemmaForCausalLM", gguf_arch=MODEL_ARCH.GEMMA, tensors=TENSORS,
               to_gguf=TO_GGUF, from_gguf=FROM_GGUF,
               hf_defaults={"hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh"},
               onnx=OnnxSupport(builder=True, genai_type="gemma", read_back=True, decoder=DECODER,
                                genai_config=True))
