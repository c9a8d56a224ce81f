"""modelport: move open models between safetensors, GGUF and ONNX, and prove the result computes the same."""
from importlib import import_module
from importlib.metadata import version

__version__ = version("modelport")  # one source: pyproject.toml
__all__ = ["convert", "load", "run", "save", "validate", "__version__"]


def __getattr__(name: str):
    """The API is imported on first use, so `modelport.formats` and friends load without the whole stack."""
    if name in ("convert", "load", "save", "validate"):
        return getattr(import_module("modelport.api"), name)
    if name == "run":  # a recipe -> pipeline.manifest.Manifest
        return import_module("modelport.pipeline").run
    raise AttributeError(name)
