"""Tokenizer maps: Hugging Face tokenizer files <-> GGUF's `tokenizer.ggml.*` keys.

HF -> GGUF follows llama.cpp's convert_hf_to_gguf.py (`_set_vocab_gpt2` / `_set_vocab_sentencepiece`) and reuses
gguf-py for everything it already does (SentencePieceVocab, SpecialVocab, the writer's key names and value types),
with one deliberate difference: `tokenizer.ggml.pre` comes from the tokenizer's own pre-tokenizer regexes, looked up
in PRE_TYPES, not from a hash of known models' outputs, so an unknown model with a standard pre-tokenizer converts.

GGUF -> HF builds a `tokenizers.Tokenizer` that reproduces what llama.cpp does with the GGUF: byte-level BPE for
"gpt2", and for the SentencePiece "llama" model a byte-fallback BPE whose merges are ordered by the token scores.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFValueType, GGUFWriter, Keys, TokenType
from gguf import vocab as gguf_vocab
from gguf.vocab import SentencePieceVocab, SpecialVocab

from modelport.formats import jsonfile
from modelport.formats.errors import BadInput, RuntimeMissing, Unsupported

KV = tuple[str, object, GGUFValueType, GGUFValueType | None]  # (key, value, type, array subtype)

SPM_SPACE = "\u2581"  # SentencePiece's visible space, "▁"

# GPT-2's regex: what ByteLevel(use_regex=True) splits with. llama.cpp's copies drop the final `|\s+`, which only
# catches a whitespace run before a non-space; its splitter emits such leftovers as their own words anyway.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
         r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
          r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
         r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
         r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DIGIT = r"\p{N}"  # Digits(individual_digits=True)


@dataclass(frozen=True)
class PreType:
    """One llama.cpp pre-tokenizer: its `tokenizer.ggml.pre` name, the HF regexes it splits with (in order; each a
    Split "Isolated", before the byte-level step), whether llama.cpp emits a word that is already a vocab entry whole
    instead of running merges on it (`ignore_merges`), and whether it adds BOS when the GGUF does not say."""

    name: str
    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False


# Regexes and flags as in llama.cpp's src/llama-vocab.cpp (llm_tokenizer_bpe and llama_vocab::impl::load); the HF
# spelling of each is the "original regex from tokenizer.json" noted there. The first row with a given regex is the
# one HF -> GGUF picks; later rows are names other converters wrote, read back on GGUF -> HF.
PRE_TYPES = (
    PreType("llama-bpe", (LLAMA3,), ignore_merges=True, add_bos=True),
    PreType("qwen2", (QWEN2,)),
    PreType("gpt-2", (GPT2,)),
    PreType("starcoder", (DIGIT, GPT2)),
    PreType("qwen35", (QWEN35,)),
    PreType("tekken", (TEKKEN,), ignore_merges=True, add_bos=True),
    PreType("gpt-4o", (GPT4O,)),
    *(PreType(n, (LLAMA3,), ignore_merges=True, add_bos=True) for n in ("llama3", "llama-v3", "falcon3", "pixtral")),
    *(PreType(n, (LLAMA3,)) for n in ("dbrx", "smaug-bpe")),
    *(PreType(n, (QWEN2,)) for n in ("deepseek-r1-qwen", "megrez")),
    *(PreType(n, (GPT2,)) for n in ("phi-2", "olmo", "mpt")),
    *(PreType(n, (DIGIT, GPT2)) for n in ("smollm", "refact", "command-r")),
    PreType("llama4", (GPT4O,)),
)
PRE_BY_NAME = {p.name: p for p in PRE_TYPES}
PRE_BY_REGEXES: dict[tuple[str, ...], PreType] = {}
for _p in PRE_TYPES:
    PRE_BY_REGEXES.setdefault(_p.regexes, _p)

# HF special-token name -> the GGUF key holding its id
SPECIAL_KEYS = {"bos": Keys.Tokenizer.BOS_ID, "eos": Keys.Tokenizer.EOS_ID, "unk": Keys.Tokenizer.UNK_ID,
                "pad": Keys.Tokenizer.PAD_ID}


# ---------------------------------------------------------------------------------------------------------------
# HF -> GGUF
# ---------------------------------------------------------------------------------------------------------------

def hf_to_gguf(files: dict[str, bytes], config: dict) -> list[KV]:
    """HF tokenizer files (name -> bytes) plus config.json -> the GGUF `tokenizer.ggml.*` (and chat template) keys,
    padded to config['vocab_size'] with `[PAD{id}]` tokens of type UNUSED as convert_hf_to_gguf.py does."""
    tj = json_file(files, "tokenizer.json")
    model = (tj or {}).get("model") or {}
    try:
        if model.get("type") == "WordPiece" or (tj is None and "vocab.txt" in files and "tokenizer.model" not in files):
            from . import wordpiece

            return wordpiece.hf_to_gguf(files, tj, config)
        if tj is not None and model.get("type") == "BPE" and not model.get("byte_fallback") and _has_byte_level(tj):
            return _gpt2_to_gguf(files, tj, config)
        if "tokenizer.model" in files:
            return _spm_to_gguf(files, config)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:  # a field missing or of a wrong type
        raise BadInput(None, f"malformed tokenizer files: {type(e).__name__}: {e}") from None
    if tj is None:
        raise BadInput(None, "no tokenizer.json or tokenizer.model among the tokenizer files")
    if model.get("type") == "BPE":
        raise Unsupported("tokenizer.json", "a SentencePiece-style BPE needs its tokenizer.model to convert to GGUF")
    raise Unsupported("tokenizer.json", f"{model.get('type')} tokenizers are not supported (byte-level BPE, "
                                        "SentencePiece BPE and WordPiece are)")


def _gpt2_to_gguf(files: dict[str, bytes], tj: dict, config: dict) -> list[KV]:
    """Byte-level BPE: convert_hf_to_gguf.py's get_vocab_base + _set_vocab_gpt2, read from tokenizer.json."""
    if (norm := tj.get("normalizer")) and norm.get("type") != "NFC":
        raise Unsupported("tokenizer.json", f"normalizer {norm.get('type')} has no llama.cpp equivalent")
    # A NFC normalizer (Qwen2) is dropped, as llama.cpp's converter does: llama.cpp does not normalize.
    pre = pre_type_of(tj.get("pre_tokenizer"))
    vocab = tj["model"].get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise BadInput("tokenizer.json", "the BPE model has no vocab")
    tokens, types = vocab_base(vocab, {a["id"]: a for a in tj.get("added_tokens") or []}, config)
    # convert_hf_to_gguf.py also re-encodes non-normalized added tokens through transformers; for the byte-level
    # tokenizers handled here that round trip is the identity, so it is left out.
    tokens = [t.replace(SPM_SPACE, " ") if ty == TokenType.USER_DEFINED else t for t, ty in zip(tokens, types)]
    w = writer()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre.name)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special_vocab(files, config, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
    return kv_list(w)


def vocab_base(vocab: dict[str, int], added: dict[int, dict], config: dict) -> tuple[list[str], list[int]]:
    """convert_hf_to_gguf.py's get_vocab_base: every id up to the vocabulary size as a token and its type, added
    tokens CONTROL when special (or looking so) else USER_DEFINED, gaps `[PAD{id}]` UNUSED."""
    n_vocab = _vocab_size(config, max([*vocab.values(), *added, -1]) + 1, "tokenizer.json")
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            text = added[i]["content"]
            special = added[i].get("special") or _looks_special(text)
            typ = TokenType.CONTROL if special else TokenType.USER_DEFINED
        elif i in by_id:
            text, typ = by_id[i], TokenType.NORMAL
        else:
            text, typ = f"[PAD{i}]", TokenType.UNUSED
        tokens.append(text)
        types.append(int(typ))
    return tokens, types


def _spm_to_gguf(files: dict[str, bytes], config: dict) -> list[KV]:
    """SentencePiece: convert_hf_to_gguf.py's _create_vocab_sentencepiece + _set_vocab_sentencepiece, with the
    pieces, scores and types read by gguf-py's SentencePieceVocab."""
    if gguf_vocab.SentencePieceProcessor is None:
        raise RuntimeMissing("tokenizer.model", "reading it needs the sentencepiece package (modelport[torch])")
    prefix = _spm_adds_prefix(files["tokenizer.model"])
    with _folder(files, config) as d:
        try:
            spv = SentencePieceVocab(d)
            pieces = list(spv.sentencepiece_tokens())
        except Exception as e:  # sentencepiece raises OSError/RuntimeError on a file it cannot parse
            raise BadInput("tokenizer.model", f"not a SentencePiece model: {e}") from None
    n_vocab = _vocab_size(config, max([len(pieces), *(i + 1 for i in spv.added_tokens_dict.values())]),
                          "tokenizer.model")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [int(TokenType.UNUSED)] * n_vocab
    for i, (text, score, typ) in enumerate(pieces):
        tokens[i], scores[i], types[i] = text.decode("utf-8"), float(score), int(typ)
    for text, i in spv.added_tokens_dict.items():  # added_tokens.json
        tokens[i], scores[i], types[i] = text, -1000.0, int(TokenType.USER_DEFINED)
    for i, tok in added_token_entries(files).items():
        text = tok["content"]
        if tok.get("special") or _looks_special(text):
            types[i] = int(TokenType.CONTROL)
        else:
            types[i], text = int(TokenType.USER_DEFINED), text.replace(SPM_SPACE, " ")
        tokens[i], scores[i] = text, -1000.0
    w = writer()
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    if not prefix:  # llama.cpp's default for SPM is on; say so only when the model turns it off
        w.add_add_space_prefix(False)
    special_vocab(files, config, load_merges=False, n_vocab=n_vocab).add_to_gguf(w, quiet=True)
    return kv_list(w)


def pre_type_of(pre_tokenizer: dict | None) -> PreType:
    """The llama.cpp pre-tokenizer that splits text the way this tokenizer.json `pre_tokenizer` does."""
    steps = _steps(pre_tokenizer)
    regexes: list[str] = []
    for i, s in enumerate(steps):
        kind = s.get("type")
        if kind == "Split" and "Regex" in s.get("pattern", {}) and s.get("behavior") == "Isolated" \
                and not s.get("invert"):
            regexes.append(s["pattern"]["Regex"])
        elif kind == "Digits" and s.get("individual_digits"):
            regexes.append(DIGIT)
        elif kind == "ByteLevel" and i == len(steps) - 1:
            if s.get("add_prefix_space"):
                raise Unsupported("tokenizer.json", "ByteLevel add_prefix_space=true has no llama.cpp equivalent")
            if s.get("use_regex", True):
                regexes.append(GPT2)
        else:
            raise Unsupported("tokenizer.json", f"pre-tokenizer step {json.dumps(s)[:120]} has no llama.cpp "
                                                "equivalent")
    pre = PRE_BY_REGEXES.get(tuple(regexes))
    if pre is None:
        known = ", ".join(dict.fromkeys(p.name for p in PRE_TYPES if PRE_BY_REGEXES[p.regexes] is p))
        shown = json.dumps(regexes, ensure_ascii=False)
        raise Unsupported("tokenizer.json", f"pre-tokenizer regex {shown[:160]}{'...' if len(shown) > 160 else ''} "
                                            f"is none of llama.cpp's known ones ({known})")
    return pre


def _steps(pre_tokenizer: dict | None) -> list[dict]:
    if not pre_tokenizer:
        return []
    return pre_tokenizer.get("pretokenizers") or [] if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]


def _has_byte_level(tj: dict) -> bool:
    return any(s.get("type") == "ByteLevel" for s in _steps(tj.get("pre_tokenizer")))


def _looks_special(text: str) -> bool:
    """convert_hf_to_gguf.py's does_token_look_special: added tokens that some models forget to mark special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>"))
            or (text.startswith("<unused") and text.endswith(">")))


def added_token_entries(files: dict[str, bytes]) -> dict[int, dict]:
    """id -> added token: tokenizer_config.json's added_tokens_decoder (what convert_hf_to_gguf.py reads), else the
    added_tokens of tokenizer.json (transformers 5 no longer writes added_tokens_decoder)."""
    tc = json_file(files, "tokenizer_config.json") or {}
    if "added_tokens_decoder" in tc:
        return {int(i): t for i, t in tc["added_tokens_decoder"].items()}
    return {int(t["id"]): t for t in (json_file(files, "tokenizer.json") or {}).get("added_tokens") or []}


def _spm_adds_prefix(blob: bytes) -> bool:
    """Whether the model puts a "▁" in front of the text (add_dummy_prefix); refuses non-BPE models, since llama.cpp's
    "llama" tokenizer is SentencePiece BPE and a Unigram model (T5 and kin) would load but split wrong. Both live only
    in the protobuf, which sentencepiece ships a reader for (it needs protobuf; without it, assume the usual)."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except Exception:
        return True
    m = pb.ModelProto()
    try:
        m.ParseFromString(blob)
    except Exception as e:
        raise BadInput("tokenizer.model", f"not a SentencePiece model: {e}") from None
    if m.trainer_spec.model_type != pb.TrainerSpec.BPE:
        kind = pb.TrainerSpec.ModelType.Name(m.trainer_spec.model_type)
        raise Unsupported("tokenizer.model", f"SentencePiece {kind} models are not supported (BPE is)")
    return m.normalizer_spec.add_dummy_prefix


def _vocab_size(config: dict, n_tokens: int, source: str) -> int:
    n = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size") or n_tokens
    if n_tokens > n:
        raise BadInput(source, f"the tokenizer has {n_tokens} tokens, more than config.json's vocab_size {n}")
    return n


def json_file(files: dict[str, bytes], name: str) -> dict | None:
    if name not in files:
        return None
    value = jsonfile.loads(files[name], name)
    if not isinstance(value, dict):
        raise BadInput(name, "expected a JSON object")
    return value


class _folder:
    """The tokenizer files and config.json in a temporary folder: gguf-py's vocab readers take a path."""

    def __init__(self, files: dict[str, bytes], config: dict):
        self.files, self.config = files, config

    def __enter__(self) -> Path:
        self.tmp = tempfile.TemporaryDirectory(prefix="modelport-tok-")
        d = Path(self.tmp.name)
        for name, blob in self.files.items():
            if Path(name).name != name or name in ("", ".", ".."):
                raise BadInput(name, "tokenizer file names must be plain file names")
            (d / name).write_bytes(blob)
        (d / "config.json").write_text(json.dumps(self.config), encoding="utf-8")
        return d

    def __exit__(self, *exc) -> None:
        self.tmp.cleanup()


def special_vocab(files: dict[str, bytes], config: dict, load_merges: bool, n_vocab: int,
                   types: tuple[str, ...] | None = None) -> SpecialVocab:
    """gguf-py's SpecialVocab: merges, special token ids (of `types`, default all), add_bos/add_eos and the chat
    template."""
    with _folder(files, config) as d:
        try:
            return SpecialVocab(d, load_merges=load_merges, n_vocab=n_vocab, special_token_types=types)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadInput("tokenizer.json", f"cannot read special tokens or merges: {e}") from None


def writer() -> GGUFWriter:
    return GGUFWriter(None, "llama")  # used only to collect keys with gguf-py's names and types; never written


def kv_list(w: GGUFWriter) -> list[KV]:
    out = []
    for key, v in w.kv_data[0].items():
        if key == Keys.General.ARCHITECTURE:
            continue
        sub = v.sub_type
        if v.type == GGUFValueType.ARRAY and sub is None:
            sub = GGUFValueType.get_type(v.value[0])
        out.append((key, v.value, v.type, sub))
    return out


# ---------------------------------------------------------------------------------------------------------------
# GGUF -> HF
# ---------------------------------------------------------------------------------------------------------------

def gguf_to_hf(kv: dict[str, object]) -> dict[str, bytes]:
    """GGUF metadata (key -> value) -> tokenizer.json and tokenizer_config.json that AutoTokenizer loads and that
    give the ids llama.cpp gives on the same GGUF."""
    from tokenizers import AddedToken

    kv = {k: _value(v) for k, v in kv.items()}
    model = kv.get(Keys.Tokenizer.MODEL)
    tokens = kv.get(Keys.Tokenizer.LIST)
    if not isinstance(tokens, list) or not tokens:
        raise BadInput(None, "GGUF has no tokenizer.ggml.tokens")
    types = kv.get(Keys.Tokenizer.TOKEN_TYPE) or [int(TokenType.NORMAL)] * len(tokens)
    if len(types) < len(tokens) or len(set(tokens)) != len(tokens):
        raise BadInput(None, "tokenizer.ggml.token_type is short or tokenizer.ggml.tokens has duplicates")
    if model == "bert":
        from . import wordpiece

        return wordpiece.gguf_to_hf(kv, tokens, types)
    if model == "gpt2":
        pre = _pre_type_named(kv.get(Keys.Tokenizer.PRE) or "default")
        tok, add_bos = _gpt2_tokenizer(kv, tokens, pre), pre.add_bos
    elif model == "llama":
        tok, add_bos = _spm_tokenizer(kv, tokens, types), True
    else:
        raise Unsupported(None, f"GGUF tokenizer model {model!r} is not supported (gpt2, llama and bert are)")
    # Control tokens are special (skipped on decode); user-defined ones are matched in text but decoded as text.
    # Their ids are already in the model vocab, so the added tokens keep them.
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == TokenType.USER_DEFINED])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == TokenType.CONTROL])
    ids = {t: kv.get(key) for t, key in SPECIAL_KEYS.items()}
    named = {t: tokens[i] for t, i in ids.items() if isinstance(i, int) and 0 <= i < len(tokens)}
    add_bos = bool(kv.get(Keys.Tokenizer.ADD_BOS, add_bos))  # else llama.cpp's default for the model/pre type
    add_eos = bool(kv.get(Keys.Tokenizer.ADD_EOS, False))
    tok.post_processor = _template(named.get("bos") if add_bos else None, named.get("eos") if add_eos else None,
                                   tokens, model == "gpt2")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "add_bos_token": add_bos, "add_eos_token": add_eos,
              **{f"{t}_token": s for t, s in named.items()}}
    if isinstance(template := kv.get(Keys.Tokenizer.CHAT_TEMPLATE), str):
        config["chat_template"] = template
    return {"tokenizer.json": tok.to_str().encode("utf-8"),
            "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")}


def special_ids(kv: dict[str, object]) -> dict:
    """The bos/eos/pad token ids a GGUF names, as config.json keys."""
    out = {}
    for t in ("bos", "eos", "pad"):
        v = _value(kv.get(SPECIAL_KEYS[t]))
        if isinstance(v, int):
            out[f"{t}_token_id"] = v
    return out


def _value(v: object) -> object:
    """Accept GGUFContents.kv's (value, type, subtype) triples as well as bare values."""
    if isinstance(v, tuple) and len(v) == 3 and isinstance(v[1], GGUFValueType):
        return v[0]
    return v


def _pre_type_named(name: str) -> PreType:
    if name not in PRE_BY_NAME:
        raise Unsupported(None, f"GGUF pre-tokenizer {name!r} is not supported (supported: {', '.join(PRE_BY_NAME)})")
    return PRE_BY_NAME[name]


def _gpt2_tokenizer(kv: dict, tokens: list[str], pre: PreType):
    """Byte-level BPE with the regexes and merge handling of the GGUF's llama.cpp pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    merges = []
    for m in kv.get(Keys.Tokenizer.MERGES) or []:
        cut = m.find(" ", 1)  # as llama.cpp splits them
        if cut < 0:
            raise BadInput(None, f"malformed merge {m!r} in tokenizer.ggml.merges")
        merges.append((m[:cut], m[cut + 1:]))
    try:
        tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, ignore_merges=pre.ignore_merges))
    except Exception as e:  # tokenizers raises a bare Exception, e.g. for a merge of tokens not in the vocab
        raise BadInput(None, f"tokenizer.ggml.merges do not fit tokenizer.ggml.tokens: {e}") from None
    steps = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in pre.regexes if r != GPT2]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=GPT2 in pre.regexes))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps) if len(steps) > 1 else steps[0]
    tok.decoder = decoders.ByteLevel()
    return tok


def _spm_tokenizer(kv: dict, tokens: list[str], types: list[int]):
    """llama.cpp's SPM tokenizer as a byte-fallback BPE.

    llama.cpp merges, at each step, the adjacent pair whose concatenation is the highest-scoring token (leftmost on
    ties), falling back to <0xXX> byte tokens; a BPE whose merges are every (left, right) split of every normal or
    user-defined token, ranked by the merged token's score, does the same. transformers' SentencePieceExtractor
    builds merges like this from a .model file; here they come from the GGUF's scores, so this is written out.
    Before that llama.cpp replaces " " with "▁" and, with add_space_prefix (default on), puts one "▁" in front of
    the text and after every special token: the Prepend normalizer runs on each piece between added tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = kv.get(Keys.Tokenizer.SCORES) or [0.0] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    mergeable = [i for i, ty in enumerate(types) if ty in (TokenType.NORMAL, TokenType.USER_DEFINED)]
    candidates = []
    for i in mergeable:
        t = tokens[i]
        for cut in range(1, len(t)):
            left, right = vocab.get(t[:cut]), vocab.get(t[cut:])
            if left is not None and right is not None:
                candidates.append((-scores[i], i, left, right))
    candidates.sort()
    merges = [(tokens[left], tokens[right]) for _, _, left, right in candidates]
    unk = kv.get(Keys.Tokenizer.UNK_ID)
    tok = Tokenizer(models.BPE(vocab, merges, byte_fallback=True, fuse_unk=True,
                               unk_token=tokens[unk] if isinstance(unk, int) and unk < len(tokens) else None))
    prefix = bool(kv.get(Keys.Tokenizer.ADD_PREFIX, True))
    steps = [normalizers.Prepend(SPM_SPACE)] if prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPM_SPACE)])
    tok.pre_tokenizer = None
    dec = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tok


def _template(bos: str | None, eos: str | None, tokens: list[str], byte_level: bool):
    """BOS/EOS around each sequence as add_bos/add_eos ask (what llama.cpp's tokenize(add_special=True) does)."""
    from tokenizers import processors

    single = " ".join(x for x in (bos and f"{bos}:0", "$A:0", eos and f"{eos}:0") if x)
    pair = " ".join(x for x in (single, bos and f"{bos}:1", "$B:1", eos and f"{eos}:1") if x)
    specials = [(s, tokens.index(s)) for s in dict.fromkeys(x for x in (bos, eos) if x)]
    template = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    if byte_level:  # keeps offsets byte-level aware, as HF's own byte-level tokenizers do
        return processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
    return template
