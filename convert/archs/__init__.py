"""The architecture families, one module each, found through the `modelport.archs` entry points (ours included)."""
from __future__ import annotations

import difflib
from functools import cache
from importlib.metadata import entry_points

from gguf import Keys

from modelport.formats.errors import BadInput, Unsupported

from .base import Arch


@cache
def registry() -> dict[str, Arch]:
    archs = {}
    for ep in entry_points(group="modelport.archs"):
        arch = ep.load()
        archs[arch.name] = arch
    return archs


def _unsupported(path, what: str, name: str, known: list[str]) -> Unsupported:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.3)
    hint = f"; closest supported: {', '.join(close)}" if close else f"; supported: {', '.join(sorted(known))}"
    return Unsupported(path, f"unsupported {what} {name!r}{hint}")


def for_hf(model_type: str, path=None) -> Arch:
    archs = registry()
    if isinstance(model_type, str) and model_type in archs:
        return archs[model_type]
    if not isinstance(model_type, str):
        raise BadInput(path, f"model_type {model_type!r} is not a string"[:200])
    raise _unsupported(path, "architecture", model_type or "(none in config.json)", list(archs))


def for_gguf(gguf_arch: str, model_type: str | None = None, path=None, kv: dict | None = None) -> Arch:
    """The family for a GGUF arch; `model_type` (from our provenance) picks among families sharing one arch, else
    whether the GGUF has experts (`kv`: its keys; llama.cpp's Mixtral is `llama` with experts)."""
    matches = [a for a in registry().values() if a.gguf_name == gguf_arch]
    for a in matches:
        if a.name == model_type:
            return a
    if matches:
        moe = bool((kv or {}).get(Keys.LLM.EXPERT_COUNT.format(arch=gguf_arch)))
        return min(matches, key=lambda a: (bool(a.experts) != moe, a.name != gguf_arch))  # then the arch's namesake
    raise _unsupported(path, "GGUF architecture", gguf_arch, sorted({a.gguf_name for a in registry().values()}))
