"""The references quantizations are checked against: llama-quantize for GGUF, run through llama-cpp-python's own
`llama_model_quantize`, and onnxruntime's MatMulNBitsQuantizer for ONNX."""
from __future__ import annotations

import numpy as np

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


def ort_matmulnbits(w: np.ndarray, bits: int, block: int) -> dict[str, bytes]:
    """onnxruntime's MatMulNBitsQuantizer on a one-MatMul model whose weight is w [N, K] (MatMul takes w.T): the
    bytes of its qweight, scales and zero points."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    elem = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}[w.dtype.type]
    n, k = w.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "W"], ["Y"], name="mm")], "g",
                              [helper.make_tensor_value_info("A", elem, [None, k])],
                              [helper.make_tensor_value_info("Y", elem, [None, n])],
                              [numpy_helper.from_array(np.ascontiguousarray(w.T), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block)
    q.process()
    node = next(n for n in q.model.model.graph.node if n.op_type == "MatMulNBits")
    inits = {t.name: numpy_helper.to_array(t).tobytes() for t in q.model.model.graph.initializer}
    return dict(zip(("qweight", "scales", "zero_points"), (inits[i] for i in node.input[1:4])))
