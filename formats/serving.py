"""Quantized Hugging Face folders for GPU servers (vLLM, SGLang, TGI): an HF folder whose config.json carries a
`quantization_config` naming the method that packed its weights. The container is the HF folder's own
(formats.safetensors reads it, headers only); this module recognises the methods and gives their native view."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import jsonfile, safetensors
from .errors import BadInput, Unsupported
from .model import Model

COMPRESSED_TENSORS = "compressed-tensors"
GPTQ = "gptq"
AWQ = "awq"
METHODS = (COMPRESSED_TENSORS, GPTQ, AWQ)  # quantization_config.quant_method values read here


@dataclass
class ServingContents:
    """The folder as stored: its native tensors (weight_packed / qweight ... under their module names) and the
    quantization_config that says how to read them."""

    path: Path
    model: Model  # native names, the config.json dict with its quantization_config
    method: str
    qconfig: dict

    @property
    def tensors(self) -> dict:
        """The stored tensors (what the files hold, for sizes)."""
        return self.model.tensors


def method(path: Path) -> str | None:
    """The quantization method of an HF folder's config.json, or None (not a folder, no quantization_config)."""
    cfg = path / "config.json"
    if not path.is_dir() or not cfg.is_file() or not safetensors.shard_files(path):
        return None
    try:  # bounded and checked as every config is; a bad one is the HF folder reader's to refuse
        q = jsonfile.loads(cfg.read_bytes(), cfg).get("quantization_config")
    except (OSError, BadInput, AttributeError):
        return None
    return q.get("quant_method") if isinstance(q, dict) else None


def sniff(path: Path) -> bool:
    """Any HF folder with a quantization_config: one whose method is not read here is refused by `read` (exit 3)
    rather than read as a float folder of packed integers."""
    return method(path) is not None


def read(path: Path) -> ServingContents:
    model = safetensors.read(path)
    qconfig = model.config.get("quantization_config")
    if not isinstance(qconfig, dict) or qconfig.get("quant_method") not in METHODS:
        raise Unsupported(path / "config.json", f"quantization_config.quant_method {qconfig.get('quant_method')!r} is "
                                                f"not read here (reads {', '.join(METHODS)})")
    return ServingContents(path, model, qconfig["quant_method"], qconfig)
