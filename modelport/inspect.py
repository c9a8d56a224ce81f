"""`modelport inspect`: what a model file holds, in its own names, as one JSON-able dict (the codec's view)."""
from __future__ import annotations

from pathlib import Path

from modelport.convert import codec as codecs


def inspect(path: str | Path) -> dict:
    path = Path(path)
    codec = codecs.detect(path)
    return {"path": str(path), **codec.inspect(codec.open(path), path)}
