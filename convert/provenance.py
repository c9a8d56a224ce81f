"""Every `modelport.*` metadata key an output carries, in one place: what made it, from what, with which options.
Writers store them in the format's own metadata (GGUF keys, safetensors `__metadata__`, ONNX metadata_props)."""
from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

VERSION = version("modelport")

VERSION_KEY = "modelport.version"
SOURCE_FORMAT = "modelport.source.format"
OPTIONS = "modelport.options"
HASHES = "modelport.source.sha256"  # written late: the source hashes are computed while the output streams
ARCH = "modelport.arch"  # the HF model_type, where the format has no architecture key of its own
CONFIG = "modelport.source.config"  # the source config.json, for what a format's own keys cannot say
CONFIG_REBUILT = "modelport.source.config_rebuilt_from"  # the file a source without config.json had it rebuilt from
SENTENCE_TRANSFORMERS = "modelport.source.sentence_transformers"  # {relative path: file text} of the source folder
EXPORTER = "modelport.exporter"  # who built an ONNX graph when it was not modelport's builder


def record(source_format: str, options: dict) -> dict[str, str]:
    """The provenance of one conversion: tool version, source format and the options that were given."""
    return {VERSION_KEY: VERSION, SOURCE_FORMAT: source_format,
            OPTIONS: json.dumps({k: v.name if isinstance(v, Path) else v for k, v in options.items() if v is not None},
                                sort_keys=True)}  # a file option (an importance matrix) by its name: paths vary
