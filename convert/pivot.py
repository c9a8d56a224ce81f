"""Any supported model file or folder as the pivot: the codec that recognises it opens its native view and maps
that into HF names (safetensors folders are the pivot already)."""
from __future__ import annotations

from pathlib import Path

from modelport.formats.model import Model

from . import codec


def load(path: str | Path) -> Model:
    """A model in any registered format as the pivot (HF names; GGUF Q/K unpermuted; ONNX weights as HF lays
    them out); reads headers only."""
    path = Path(path)
    c = codec.detect(path)
    return c.to_pivot(c.open(path), path)
