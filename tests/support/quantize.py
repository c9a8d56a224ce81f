"""llama-quantize, the reference every GGUF quantization is checked against: run through llama-cpp-python's own
`llama_model_quantize`."""
from __future__ import annotations

from modelport import api
from modelport.convert.gguf import quant_plan
from modelport.formats import gguf
from modelport.validators.runtimes import llama_cpp


def llama_quantize(src, dst, preset: str, allow_requantize: bool = False) -> None:
    lc = llama_cpp()
    params = lc.llama_model_quantize_default_params()
    params.ftype = quant_plan.PRESETS[preset]
    params.nthread = 2
    params.allow_requantize = allow_requantize
    assert lc.llama_model_quantize(str(src).encode(), str(dst).encode(), params) == 0


def assert_equals_llama_quantize(src, tmp_path, preset: str = "Q4_K_M"):
    """HF folder SRC -> `preset` through modelport in one pass gives, tensor by tensor, the types, shapes and bytes
    llama-quantize gives from our lossless f32 GGUF of it; returns our GGUF's contents."""
    api.convert(src, tmp_path / "lossless.gguf", dtype="f32")
    llama_quantize(tmp_path / "lossless.gguf", tmp_path / "theirs.gguf", preset)
    api.convert(src, tmp_path / "ours.gguf", quant=preset)
    a, b = gguf.read(tmp_path / "ours.gguf"), gguf.read(tmp_path / "theirs.gguf")
    assert list(a.tensors) == list(b.tensors)
    for name, ta in a.tensors.items():
        tb = b.tensors[name]
        assert (ta.dtype, ta.shape) == (tb.dtype, tb.shape), name
        assert ta.stored.read() == tb.stored.read(), f"{name} ({ta.dtype}) differs from llama-quantize's"
    return a
