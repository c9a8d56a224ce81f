"""BERT encoders (sentence-transformers models such as all-MiniLM-L6-v2, bge): llama.cpp's `bert` arch, run for
embeddings. Mirrors convert_hf_to_gguf.py's BertModel (conversion/bert.py in llama.cpp 0c1e57098): its hparams,
non-causal attention, and filter_tensors, which reads BertModel names with or without the `bert.` prefix of the
task-head classes, renames old LayerNorm gamma/beta, and leaves out what an embedding model does not run (the
pooler, the MLM and NSP heads, the position_ids buffer). The pooling type comes from the sentence-transformers
files (convert.sentence_transformers), the WordPiece vocabulary through convert.tokenizer.
"""
from __future__ import annotations

import re

from gguf import MODEL_ARCH, Keys

from .base import BOOL, F32, Arch, Encoder, HParam, OnnxSupport

HPARAMS = (
    HParam(Keys.LLM.CONTEXT_LENGTH, "max_position_embeddings"),
    HParam(Keys.LLM.EMBEDDING_LENGTH, "hidden_size"),
    HParam(Keys.LLM.BLOCK_COUNT, "num_hidden_layers"),
    HParam(Keys.LLM.FEED_FORWARD_LENGTH, "intermediate_size"),
    HParam(Keys.Attention.HEAD_COUNT, "num_attention_heads"),
    HParam(Keys.Attention.LAYERNORM_EPS, "layer_norm_eps", F32),
)

BLOCK = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
         "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")
EMBEDDINGS = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
              "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias")
TENSORS = EMBEDDINGS + tuple(f"encoder.layer.{{bid}}.{t}.{p}" for t in BLOCK for p in ("weight", "bias"))

# BertModel.filter_tensors: what llama.cpp leaves out of an embedding model
DROPPED = re.compile(r"(embeddings\.position_ids|pooler\.dense\.(weight|bias)|cls\.predictions\..*|"
                     r"cls\.seq_relationship\..*)$")
RENAMES = ((re.compile(r"\.gamma$"), ".weight"), (re.compile(r"\.beta$"), ".bias"))


def canonical(name: str) -> str | None:
    """An HF tensor name as TENSORS spells it, or None for one llama.cpp's BertModel leaves out."""
    name = name.removeprefix("bert.")
    for pattern, repl in RENAMES:
        name = pattern.sub(repl, name)
    return None if DROPPED.fullmatch(name) else name


def normalize(config: dict) -> dict:
    cfg = dict(config)
    cfg["num_key_value_heads"] = cfg["num_attention_heads"]  # no grouped-query attention (quantization asks)
    cfg.setdefault("layer_norm_eps", 1e-12)
    return cfg


ARCH = Arch(
    name="bert", hf_class="BertModel", gguf_arch=MODEL_ARCH.BERT, hparams=HPARAMS, tensors=TENSORS,
    normalize=normalize, canonical=canonical,
    extra_kv=lambda cfg: [(Keys.Attention.CAUSAL, False, BOOL)],  # BertModel.set_gguf_parameters
    hf_defaults={"hidden_act": "gelu", "position_embedding_type": "absolute"},
    # modelport's encoder builder (convert/onnx/encoder.py); optimum's export (optimum=()) is no longer used for it
    onnx=OnnxSupport(builder=True, optimum=(), encoder=Encoder()),
)
