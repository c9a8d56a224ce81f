"""modelport: move open models between safetensors, GGUF and ONNX, and prove the result computes the same."""
import sys
import types
from importlib import import_module
from importlib.metadata import version


def _import_gguf_without_mistral_common() -> None:
    """gguf-py imports mistral_common's tokenizers at import time where it is installed (0.7 s of every command's
    start here, a sixth of an f16 conversion of a 1B model) for a vocabulary class modelport never uses: our
    tokenizers map from tokenizer.json / tokenizer.model. Load gguf first with mistral_common hidden; in this
    process gguf.vocab then reports mistral_common absent. Where either is already imported nothing changes."""
    if "mistral_common" in sys.modules:
        return
    sys.modules["mistral_common"] = None  # an import of it raises ImportError, which gguf.vocab catches
    try:
        import gguf  # noqa: F401
    finally:
        del sys.modules["mistral_common"]


_import_gguf_without_mistral_common()

from modelport import convert as _convert_package  # noqa: E402

__version__ = version("modelport")  # one source: pyproject.toml
__all__ = ["convert", "load", "run", "save", "validate", "__version__"]


class _ConvertPackage(types.ModuleType):
    """`modelport.convert` is both the documented API function and the subpackage of that name, which the import
    system binds here whenever anything imports it. Calling the package is therefore the API call."""

    def __call__(self, *args, **kwargs):
        return import_module("modelport.api").convert(*args, **kwargs)


_convert_package.__class__ = _ConvertPackage
convert = _convert_package


def __getattr__(name: str):
    """The API is imported on first use, so `modelport.formats` and friends load without the whole stack."""
    if name in ("load", "save", "validate"):
        return getattr(import_module("modelport.api"), name)
    if name == "run":  # a recipe -> pipeline.manifest.Manifest
        return import_module("modelport.pipeline").run
    raise AttributeError(name)
