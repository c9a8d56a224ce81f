"""Every JSON modelport parses (safetensors headers, config.json, the index, tokenizer.json, configs stored inside
GGUF or ONNX) goes through here: duplicate keys refused (two readers could disagree on which one counts) and nesting
bounded (the standard parser recurses and a few KB of brackets would otherwise overflow the stack)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import inputs
from .errors import BadInput

MAX_DEPTH = 128  # serde_json's recursion limit, which the safetensors library parses headers with
MAX_FILE = 1 << 30  # a side file (tokenizer.json with a 256k vocabulary is ~20 MB) is never near a GiB


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r}")
    return out


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (the value may be as deep as the parser allowed)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                break
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v)
                         if isinstance(c, (dict, list)))
    return deepest


def loads(text: str | bytes, path: str | Path | None, what: str = "") -> Any:
    """Parsed JSON, or BadInput naming `path` (and `what` in it) and the problem."""
    label = f"{what} " if what else ""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise BadInput(path, f"{label}is JSON nested more than {MAX_DEPTH} deep") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError, as are duplicates
        raise BadInput(path, f"{label}is not valid JSON: {e}") from None
    if _depth(value) > MAX_DEPTH:
        raise BadInput(path, f"{label}is JSON nested more than {MAX_DEPTH} deep")
    return value


def load(path: Path, root: Path | None = None, kind: type | None = dict) -> Any:
    """A JSON file (a regular file, inside `root` if given), its top level of type `kind` (None: any)."""
    value = loads(inputs.read_bytes(path, root, MAX_FILE), path)
    if kind is not None and not isinstance(value, kind):
        raise BadInput(path, f"expected a JSON {'object' if kind is dict else kind.__name__}, "
                             f"got {type(value).__name__}")
    return value
