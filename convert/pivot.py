"""Any supported model file or folder as the pivot: the format's reader gives its native view, and the format's
map (GGUF, ONNX) turns it into HF names; safetensors folders are the pivot already."""
from __future__ import annotations

from pathlib import Path

from modelport.formats import registry
from modelport.formats.model import Model

from . import gguf_map, onnx_import

TO_PIVOT = {"gguf": gguf_map.from_gguf, "onnx": onnx_import.from_onnx}


def load(path: str | Path) -> Model:
    """HF folder, .safetensors, .gguf or .onnx as the pivot (HF names; GGUF Q/K unpermuted; ONNX weights as HF lays
    them out); reads headers only."""
    path = Path(path)
    fmt = registry.detect(path)
    native = fmt.read(path)
    to_pivot = TO_PIVOT.get(fmt.name)
    return to_pivot(native, path) if to_pivot else native
