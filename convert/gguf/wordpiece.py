"""BERT's WordPiece tokenizer <-> llama.cpp's "bert" (WPM) vocabulary.

HF -> GGUF is convert_hf_to_gguf.py's BertModel.set_vocab: get_vocab_base's tokens and types, then every token but
the control ones in llama.cpp's phantom-space spelling ("▁word" starts a word, "##piece" continues one and becomes
"piece"), plus gguf-py's SpecialVocab and the BertNormalizer flags it reads. llama.cpp's WPM tokenizer ignores
`tokenizer.ggml.pre` (llama-vocab.cpp sets the default pre-tokenizer for WPM), so "default" is written; llama.cpp's
converter writes a name found by hashing the tokenizer's output ("jina-v2-en" for bert-base-uncased vocabularies).

GGUF -> HF undoes the phantom spelling and builds the tokenizer llama.cpp's WPM tokenizer is: BertNormalizer (lowercase
and strip accents unless the GGUF says otherwise, llama.cpp's defaults), BertPreTokenizer, greedy longest-match
WordPiece, [CLS] text [SEP]. tokenizers has each piece; the mapping between them is written here. The same builder
makes a tokenizer.json for a folder that ships only vocab.txt, as transformers' BertTokenizer would read it.
"""
from __future__ import annotations

import json

from gguf import GGUFValueType, Keys, TokenType

from modelport.formats.errors import BadInput, Unsupported
from modelport.convert.gguf.tokenizer import KV, SPM_SPACE, added_token_entries, json_file, kv_list, special_vocab, vocab_base, writer

CONTINUES = "##"  # WordPiece's continuing-subword prefix
# tokenizer.ggml.normalizer.* (llama.cpp's LLM_KV_TOKENIZER_NORMALIZER_*; gguf-py 0.19 has no constants for them)
LOWERCASE, STRIP_ACCENTS = "tokenizer.ggml.normalizer.lowercase", "tokenizer.ggml.normalizer.strip_accents"
# gguf-py's SpecialVocab types llama.cpp has keys for (its "cls" has none: BOS is [CLS] for WPM)
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "mask")
# BERT's special tokens by tokenizer_config.json name -> the GGUF key holding the id, and llama.cpp's default id
SPECIALS = {"cls_token": (Keys.Tokenizer.BOS_ID, 101), "sep_token": (Keys.Tokenizer.SEP_ID, 102),
            "unk_token": (Keys.Tokenizer.UNK_ID, 100), "pad_token": (Keys.Tokenizer.PAD_ID, 0),
            "mask_token": (Keys.Tokenizer.MASK_ID, 103)}
DEFAULT_NAMES = {"cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]", "pad_token": "[PAD]",
                 "mask_token": "[MASK]"}  # transformers' BertTokenizer defaults


def hf_to_gguf(files: dict[str, bytes], tj: dict | None, config: dict) -> list[KV]:
    """tokenizer.json's WordPiece model (or a bare vocab.txt, made into one first) -> the GGUF "bert" vocabulary."""
    if tj is None:
        files = {**files, "tokenizer.json": _from_vocab_txt(files).to_str().encode("utf-8")}
        tj = json_file(files, "tokenizer.json")
    _check_steps(tj)
    vocab = tj["model"]["vocab"]
    tokens, types = vocab_base(vocab, added_token_entries(files), config)
    tokens = [_phantom(t, ty) for t, ty in zip(tokens, types)]
    w = writer()
    w.add_token_type_count(config.get("type_vocab_size", 1))
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = special_vocab(files, config, load_merges=False, n_vocab=len(tokens), types=SPECIAL_TYPES)
    special.add_to_gguf(w, quiet=True)
    kv = kv_list(w)
    norm = tj["normalizer"]
    kv.append((LOWERCASE, bool(norm.get("lowercase", True)), GGUFValueType.BOOL, None))
    if norm.get("strip_accents") is not None:  # None: as lowercase, which is also llama.cpp's default
        kv.append((STRIP_ACCENTS, bool(norm["strip_accents"]), GGUFValueType.BOOL, None))
    return kv


def _phantom(text: str, typ: TokenType) -> str:
    """BertModel.set_vocab's phantom(): llama.cpp marks word starts, not continuations."""
    if typ == TokenType.CONTROL:
        return text
    return text[len(CONTINUES):] if text.startswith(CONTINUES) else SPM_SPACE + text


def _check_steps(tj: dict) -> None:
    """What llama.cpp's WPM tokenizer does is BertNormalizer + BertPreTokenizer; anything else would split apart."""
    norm, pre = tj.get("normalizer") or {}, tj.get("pre_tokenizer") or {}
    if norm.get("type") != "BertNormalizer" or pre.get("type") != "BertPreTokenizer":
        raise Unsupported("tokenizer.json", f"WordPiece with normalizer {norm.get('type')} and pre-tokenizer "
                                            f"{pre.get('type')} has no llama.cpp equivalent (BERT's own has)")
    if tj["model"].get("continuing_subword_prefix", CONTINUES) != CONTINUES:
        raise Unsupported("tokenizer.json", "llama.cpp's WordPiece needs the '##' continuing-subword prefix")


def _from_vocab_txt(files: dict[str, bytes]):
    """The fast tokenizer transformers' BertTokenizer makes of vocab.txt and tokenizer_config.json (its defaults:
    lowercase, accents stripped as lowercase says, BERT's special token names)."""
    pieces = files["vocab.txt"].decode("utf-8").splitlines()
    tc = {**(json_file(files, "special_tokens_map.json") or {}), **(json_file(files, "tokenizer_config.json") or {})}
    named = {}
    for name, default in DEFAULT_NAMES.items():
        value = tc.get(name, default)
        named[name] = value if isinstance(value, str) else value.get("content")
        if named[name] not in pieces:
            raise BadInput("vocab.txt", f"has no {name} {named[name]!r}")
    return _bert_tokenizer(pieces, named, bool(tc.get("do_lower_case", True)), tc.get("strip_accents"),
                           [p for p in pieces if p in named.values()])


def _bert_tokenizer(pieces: list[str], named: dict[str, str], lowercase: bool, strip: bool | None,
                    control: list[str]):
    """BERT's tokenizer: BertNormalizer, BertPreTokenizer, greedy longest-match WordPiece, [CLS] text [SEP]."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ids = {p: i for i, p in enumerate(pieces)}
    cls, sep = named["cls_token"], named["sep_token"]
    tok = Tokenizer(models.WordPiece(ids, unk_token=named["unk_token"], continuing_subword_prefix=CONTINUES))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=strip,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, ids[cls]), (sep, ids[sep])])
    tok.decoder = decoders.WordPiece(prefix=CONTINUES, cleanup=True)
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in control])
    return tok


def gguf_to_hf(kv: dict, tokens: list[str], types: list[int]) -> dict[str, bytes]:
    """A GGUF "bert" vocabulary -> tokenizer.json, tokenizer_config.json and vocab.txt, as BERT folders ship."""
    pieces = [t if ty == TokenType.CONTROL else t[len(SPM_SPACE):] if t.startswith(SPM_SPACE) else CONTINUES + t
              for t, ty in zip(tokens, types)]
    if len(set(pieces)) != len(pieces):
        raise BadInput(None, "tokenizer.ggml.tokens spell one WordPiece token twice")
    named = {}
    for name, (key, default) in SPECIALS.items():
        i = kv.get(key, default)
        if not isinstance(i, int) or not 0 <= i < len(pieces):
            raise BadInput(None, f"{key} = {i!r} is not a token of this vocabulary")
        named[name] = pieces[i]
    lowercase, strip = bool(kv.get(LOWERCASE, True)), kv.get(STRIP_ACCENTS)
    tok = _bert_tokenizer(pieces, named, lowercase, strip,
                          [p for p, ty in zip(pieces, types) if ty == TokenType.CONTROL])
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase, "strip_accents": strip,
              "tokenize_chinese_chars": True, "clean_up_tokenization_spaces": True, **named}
    return {"tokenizer.json": tok.to_str().encode("utf-8"),
            "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
            "vocab.txt": ("\n".join(pieces) + "\n").encode("utf-8")}
