"""The built-in validation texts (samples/texts/*.txt, written for this project): each stresses a different part of
a tokenizer or model — prose, code, CJK, emoji, whitespace runs, and ~1k tokens of long context for positions
far from the start (rope bugs show there first)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from modelport.formats.errors import BadInput

NAMES = ("prose", "code", "cjk", "emoji", "whitespace", "long")


def builtin() -> dict[str, str]:
    root = resources.files("modelport.samples").joinpath("texts")
    return {name: root.joinpath(f"{name}.txt").read_text(encoding="utf-8") for name in NAMES}


def from_file(path: str | Path) -> dict[str, str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(path, f"cannot read as UTF-8 text ({e.__class__.__name__})") from None
    if not text.strip():
        raise BadInput(path, "the text file is empty")
    return {path.stem: text}
