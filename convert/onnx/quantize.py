"""An existing ONNX model (ours or anyone's) quantized in memory with onnxruntime's quantizers.

- int4 / int8: weight-only block-wise MatMulNBits (onnxruntime's MatMulNBitsQuantizer, asymmetric with uint8 zero
  points, its default). For int8 this is what onnxruntime recommends for LLM decoders, and what onnxruntime-genai's
  builder writes: activations stay float, so accuracy is that of 8-bit block-wise weights. `quantize_dynamic`
  (MatMulInteger) would also quantize every activation to 8 bits with one scale per tensor on each call, which
  outlier channels of decoder activations make lossy, and costs a DynamicQuantizeLinear per MatMul.
- fp16: onnxruntime's float16 converter, inputs and outputs kept float32 so the result is a drop-in replacement.

MatMulNBitsQuantizer rewrites MatMul nodes only. Our own graphs (and other exports) apply linear layers as Gemm with
transB=1 on the HF [out, in] weight, so those are rewritten here as MatMulNBits with operands from
convert.nbits.from_float: the same onnxruntime kernels, so the same bytes the quantizer gives for the MatMul
form. The rewrite is ours because no onnxruntime tool handles Gemm.
"""
from __future__ import annotations

import logging

from modelport.formats.errors import BadInput, RuntimeMissing, Unsupported
from modelport.formats.model import MemorySlice, TensorRef
from modelport.formats.onnx import ONNX_DTYPES, OnnxContents

from modelport.convert import dtypes
from modelport.convert.onnx.graph import MS
from modelport.convert.onnx.nbits import from_float

QUANTS = {"int4": 4, "int8": 8, "fp16": None}  # --quant -> MatMulNBits bits (None: float16 conversion)
FLOATS = {code: name for code, name in ONNX_DTYPES.items() if name in dtypes.FLOATS}  # float weight types
COMPUTE = {1: "F32", 10: "F16"}  # the types onnxruntime's CPU MatMulNBits computes in
PROTOBUF_LIMIT = 2 << 30  # onnx's shape inference serializes the model: not past protobuf's 2 GiB
INLINE_BYTES = 1024  # smaller initializers stay in the .onnx, as onnx's own external-data threshold keeps them


def _onnx():
    try:
        import onnx
        import onnxruntime  # noqa: F401  (the quantizers below)
    except ImportError:
        raise RuntimeMissing(None, "quantizing ONNX needs onnx and onnxruntime: pip install 'modelport[onnx]'") \
            from None
    return onnx


def _stored(name: str, inits: dict, producers: dict, onnx):
    """(initializer, element type the graph computes in) for a tensor that is a float initializer, or a Cast of one
    (how a graph computes in float32 on bfloat16 weights); else None."""
    if name in inits:
        return inits[name], inits[name].data_type
    cast = producers.get(name)
    if cast is None or cast.op_type != "Cast" or cast.input[0] not in inits:
        return None
    return inits[cast.input[0]], next(onnx.helper.get_attribute_value(a) for a in cast.attribute if a.name == "to")


def _linear_gemm(node, inits: dict, producers: dict, onnx):
    """(weight initializer, compute type, bias name) when `node` is Gemm(x, W, b?) = x @ W.T + b with W a 2-D float
    initializer (or its Cast) and b absent or of shape [N], the form MatMulNBits(x, W, bias) computes; else None."""
    if node.op_type != "Gemm" or len(node.input) < 2:
        return None
    found = _stored(node.input[1], inits, producers, onnx)
    if found is None:
        return None
    weight, compute = found
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transB") != 1 or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 \
            or attrs.get("beta", 1.0) != 1.0 or len(weight.dims) != 2 or weight.data_type not in FLOATS \
            or compute not in COMPUTE:
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    found = _stored(bias, inits, producers, onnx) if bias else None
    if bias and (found is None or list(found[0].dims) != [weight.dims[0]] or found[1] != compute):
        return None
    return weight, compute, bias


def _gemms_to_nbits(graph, bits: int, block_size: int, level: dict, onnx) -> int:
    """Rewrite the linear Gemms of `graph` as MatMulNBits (a weight two Gemms share is quantized once); returns
    how many weights. Casts and float weights that nothing reads any more are dropped."""
    inits = {t.name: t for t in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    nodes, done = [], {}
    for node in graph.node:
        found = _linear_gemm(node, inits, producers, onnx)
        if found is None:
            nodes.append(node)
            continue
        weight, compute, bias = found
        if weight.name not in done:
            source = MemorySlice.tensor(numpy_helper.to_array(weight), FLOATS[weight.data_type])
            nb = from_float(source, bits, block_size, COMPUTE[compute])
            names = [f"{weight.name}.{part}" for part in ("qweight", "scales", "zero_points")]
            graph.initializer.extend(numpy_helper.from_array(part.read(), name) for part, name in
                                     zip((nb.qweight, nb.scales, nb.zero_points), names))
            done[weight.name] = (nb, names)
        nb, names = done[weight.name]
        inputs = [node.input[0], *names] + (["", bias] if bias else [])
        nodes.append(helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name, domain=MS,
                                      K=nb.K, N=nb.N, bits=nb.bits, block_size=nb.block_size, **level))
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    nodes = [n for n in nodes if n.op_type != "Cast" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    for name in done:
        if name not in used:
            graph.initializer.remove(inits[name])
    return len(done)


def _attach_weights(contents: OnnxContents, onnx):
    """The model with its external data read in through the references formats.onnx.read has checked (inside the
    folder, within each file), not by onnx's own loader, which refuses a hard-linked data file."""
    proto = onnx.load(str(contents.path), load_external_data=False)
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            t.raw_data = bytes(contents.tensors[t.name].stored.read())
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
    return proto


def quantize(contents: OnnxContents, quant: str, block_size: int = 32, accuracy_level: int | None = None):
    """The model read by formats.onnx.read, loaded whole and quantized as `quant`; returns the new
    onnx.ModelProto. onnxruntime's quantizers work on the whole model in memory, so this holds it all, unlike our
    converters. `accuracy_level` is every MatMulNBits' attribute (None writes none: the op's default, 0)."""
    onnx = _onnx()
    path = contents.path
    if quant not in QUANTS:
        raise Unsupported(None, f"unknown ONNX quantization {quant!r}; valid: {', '.join(QUANTS)}")
    bits = QUANTS[quant]
    if accuracy_level is not None and bits is None:
        raise BadInput(None, "--accuracy-level is MatMulNBits': it needs --quant int4 or int8")
    proto = _attach_weights(contents, onnx)
    if bits is None:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        big = proto.ByteSize() >= PROTOBUF_LIMIT
        return convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=big)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.WARNING)  # a line per node otherwise
    level = {} if accuracy_level is None else {"accuracy_level": accuracy_level}
    if _gemms_to_nbits(proto.graph, bits, block_size, level, onnx) and not any(o.domain == MS for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(MS, 1))
    quantizer = MatMulNBitsQuantizer(proto, bits=bits, block_size=block_size, accuracy_level=accuracy_level)
    quantizer.process()
    out = quantizer.model.model
    if not any(n.op_type == "MatMulNBits" for n in out.graph.node):
        raise Unsupported(path, "no MatMul or Gemm with a constant float weight: nothing to quantize")
    return out


def detach_weights(proto) -> list[tuple[str, TensorRef]]:
    """Take the initializers of 1 KiB and more out of `proto`'s main graph, as in-memory references for the
    external-data writer (formats.onnx.write), one at a time so the model is never held twice."""
    onnx = _onnx()
    graph, kept, out = proto.graph, [], []
    while graph.initializer:
        t = graph.initializer.pop()
        dtype = ONNX_DTYPES.get(t.data_type)
        arr = onnx.numpy_helper.to_array(t) if dtype else None
        if arr is None or arr.nbytes < INLINE_BYTES:
            kept.append(t)
            continue
        out.append((t.name, MemorySlice.tensor(arr, dtype)))
    graph.initializer.extend(reversed(kept))
    return out[::-1]
