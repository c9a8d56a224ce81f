"""Falcon 7B (multi-query), 40B/180B (new decoder architecture: grouped KV, separate ln_attn/ln_mlp) and Falcon2 11B
(grouped KV, one LayerNorm): llama.cpp's `falcon` arch, parallel attention and MLP, no biases, NeoX rope.

HF fuses Q, K and V in `query_key_value` as n_kv groups of (n_head/n_kv query heads, one key, one value);
llama.cpp wants all queries, then all keys, then all values. The rows are reordered as convert_hf_to_gguf.py's
FalconModel does (for 7B, one group, the reorder is the identity), and back on the way out. Unlike FalconModel, the
KV head count is the one transformers' FalconAttention uses: a multi-query model has one, whatever `num_kv_heads`
says (transformers writes num_kv_heads = num_attention_heads into a re-saved falcon-7b config.json).
"""
from __future__ import annotations

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from modelport.formats.errors import Unsupported

from .base import F32, Arch, Decoder, HParam, Limit, OnnxSupport

HPARAMS = (
    HParam(Keys.LLM.VOCAB_SIZE, "vocab_size"),
    HParam(Keys.LLM.CONTEXT_LENGTH, "max_position_embeddings"),
    HParam(Keys.LLM.EMBEDDING_LENGTH, "hidden_size"),
    HParam(Keys.LLM.BLOCK_COUNT, "num_hidden_layers"),
    HParam(Keys.LLM.FEED_FORWARD_LENGTH, "ffn_hidden_size"),
    HParam(Keys.Attention.HEAD_COUNT, "num_attention_heads"),
    HParam(Keys.Attention.HEAD_COUNT_KV, "num_kv_heads"),
    HParam(Keys.Rope.FREQ_BASE, "rope_theta", F32),
    HParam(Keys.Attention.LAYERNORM_EPS, "layer_norm_epsilon", F32),
)

BLOCK = ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
COMMON = ("transformer.word_embeddings.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
          "lm_head.weight") + tuple(f"transformer.h.{{bid}}.{t}.weight" for t in BLOCK)
NORMS_ONE = ("input_layernorm",)
NORMS_TWO = ("ln_attn", "ln_mlp")  # gguf-py: attn_norm_2 and attn_norm


def _norms(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"transformer.h.{{bid}}.{n}.{p}" for n in names for p in ("weight", "bias"))


def _two_norms(cfg: dict) -> bool:
    return bool(cfg.get("new_decoder_architecture")) and (cfg.get("num_ln_in_parallel_attn") or 2) == 2


def tensors_for(cfg: dict) -> tuple[str, ...]:
    return COMMON + _norms(NORMS_TWO if _two_norms(cfg) else NORMS_ONE)


def hf_from_gguf(cfg: dict, kv: dict, tensors: dict) -> dict:
    """A rebuilt config: the grouped layout reads 7B's single KV head right too; the norms are told by attn_norm_2."""
    return {"new_decoder_architecture": True, "num_ln_in_parallel_attn": 2 if "blk.0.attn_norm_2.weight" in tensors
            else 1}


# what llama.cpp's falcon graph computes; other Falcon variants (Falcon-RW's ALiBi, sequential blocks) it cannot run
REQUIRED = {"alibi": False, "parallel_attn": True, "bias": False}


def normalize(config: dict) -> dict:
    cfg = dict(config)
    for key, value in REQUIRED.items():
        if bool(cfg.get(key, value)) != value:
            raise Unsupported("config.json", f"falcon with {key}={cfg[key]} has no llama.cpp equivalent")
    grouped = cfg.get("new_decoder_architecture") or not cfg.get("multi_query", True)
    cfg["num_kv_heads"] = (cfg.get("num_kv_heads") or cfg["num_attention_heads"]) if grouped else 1
    cfg["ffn_hidden_size"] = cfg.get("ffn_hidden_size") or 4 * cfg["hidden_size"]
    cfg.setdefault("max_position_embeddings", 2048)  # what FalconModel writes: falcon configs leave it out
    cfg.setdefault("rope_theta", 10000.0)
    cfg.setdefault("tie_word_embeddings", True)  # PretrainedConfig's default
    cfg.setdefault("layer_norm_epsilon", 1e-5)  # FalconConfig's defaults, left out of a config.json that keeps them
    cfg.setdefault("activation", "gelu")
    cfg.update(num_key_value_heads=cfg["num_kv_heads"], intermediate_size=cfg["ffn_hidden_size"],
               head_dim=cfg["hidden_size"] // cfg["num_attention_heads"])
    return cfg


def _groups(cfg: dict) -> tuple[int, int, int]:
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_kv_heads"]
    return n_kv, n_head // n_kv, cfg["hidden_size"] // n_head


def _to_gguf(w: np.ndarray, cfg: dict) -> np.ndarray:
    """(n_kv groups of [q x n_head/n_kv, k, v]) -> [all q; all k; all v], rows of head_dim."""
    n_kv, q_per_kv, head_dim = _groups(cfg)
    qkv = w.reshape(n_kv, q_per_kv + 2, head_dim, *w.shape[1:])
    return np.concatenate([qkv[:, :-2].reshape(-1, *w.shape[1:]), qkv[:, -2].reshape(-1, *w.shape[1:]),
                           qkv[:, -1].reshape(-1, *w.shape[1:])])


def _from_gguf(w: np.ndarray, cfg: dict) -> np.ndarray:
    n_kv, q_per_kv, head_dim = _groups(cfg)
    q, k, v = np.split(w, [n_kv * q_per_kv * head_dim, (n_kv * q_per_kv + n_kv) * head_dim])
    parts = (q.reshape(n_kv, q_per_kv, head_dim, *w.shape[1:]), k.reshape(n_kv, 1, head_dim, *w.shape[1:]),
             v.reshape(n_kv, 1, head_dim, *w.shape[1:]))
    return np.concatenate(parts, axis=1).reshape(w.shape)


# optimum's export, which modelport no longer uses for falcon, still reads back through the graph walk for 7B; the
# read-back test (tests/test_onnx_import.py) exports the samples this leaves
NEW_DECODER = Limit(lambda cfg: bool(cfg.get("new_decoder_architecture")),
                    "new_decoder_architecture (Falcon 40B/180B, Falcon2)",
                    "optimum's dummy cache has num_kv_heads heads, transformers caches keys broadcast to all attention "
                    "heads, and the trace fails")


def _block_norms(cfg: dict) -> tuple[str | None, ...]:
    """The norm before attention and the one before the MLP; None: the MLP reads the attention norm's output."""
    return ("ln_attn", None, "ln_mlp", None) if _two_norms(cfg) else ("input_layernorm", None, None, None)


# FalconDecoderLayer with parallel_attn: the fused query_key_value in its grouped layout (7B's one group: all queries,
# one key, one value), attention and MLP side by side, LayerNorms with biases, the ungated MLP with FalconConfig's
# exact gelu. onnxruntime-genai's builder has no falcon; its generic `decoder` type runs the graph
DECODER = Decoder(embed="transformer.word_embeddings", layers="transformer.h", attention=("self_attention", "dense"),
                  final_norm="transformer.ln_f", qkv=("query_key_value",) * 3, qkv_grouped=True,
                  mlp=(None, "dense_h_to_4h", "dense_4h_to_h"), layer_norm=True, parallel=True,
                  block_norms_for=_block_norms, norm_eps=lambda cfg: cfg["layer_norm_epsilon"],
                  activation=lambda cfg: cfg["activation"])

ARCH = Arch(
    name="falcon", hf_class="FalconForCausalLM", gguf_arch=MODEL_ARCH.FALCON, hparams=HPARAMS,
    tensors=COMMON + _norms(NORMS_ONE + NORMS_TWO), tensors_for=tensors_for, hf_from_gguf=hf_from_gguf,
    normalize=normalize,
    to_gguf={MODEL_TENSOR.ATTN_QKV: _to_gguf}, from_gguf={MODEL_TENSOR.ATTN_QKV: _from_gguf},
    hf_defaults={"alibi": False, "bias": False, "parallel_attn": True, "multi_query": True},
    onnx=OnnxSupport(builder=True, genai_type="decoder", read_back=True, optimum=(NEW_DECODER,), decoder=DECODER),
)
