"""Any supported model file or folder as the pivot: the codec that recognises it opens its native view and maps
that into HF names (safetensors folders are the pivot already)."""
from __future__ import annotations

from pathlib import Path

from modelport.formats.errors import BadInput
from modelport.formats.model import Model

from . import archs, codec
from .archs import dims
from .archs.base import hub_layout


def load(path: str | Path) -> Model:
    """A model in any registered format as the pivot (HF names; GGUF Q/K unpermuted; ONNX weights as HF lays
    them out; config.json in the hub's layout, which every writer and family map reads); reads headers only. Its
    configuration and tensor set are checked against each other here, once."""
    path = Path(path)
    c = codec.detect(path)
    model = c.to_pivot(c.open(path), path)
    family = archs.registry().get(model.arch) if isinstance(model.arch, str) else None
    model.config = hub_layout(model.config, family.t5_names if family else None)
    files = model.metadata.get("source_files") or [path]
    where = files[0] if len(files) == 1 else path
    if not model.tensors:
        raise BadInput(where, "holds no tensors")
    if family is not None:  # an unknown family is refused by name when it is written
        dims.check_tensors(family, dims.normalized(family, model.config, path), model.tensors, where)
    return model
