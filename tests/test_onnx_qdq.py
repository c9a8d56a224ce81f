"""`--ops qdq` and `--target` (issue 13): quantized weights as standard DequantizeLinear -> MatMul (opset 21).

A Q4_0 GGUF goes to ONNX without requantization: every Q4_0 weight dequantizes, in onnxruntime and in OpenVINO,
bit-exactly to gguf-py's values, and the model runs in onnxruntime's CPU and in OpenVINO's own CPU runtime within
mean KL 1e-4 of llama.cpp on the f32-dequantized GGUF. From HF, the QDQ weights hold exactly the values of the
MatMulNBits export (both come from onnxruntime's quantizer kernels). A target refuses what it cannot run (exit 3)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from support.cli import run_cli
from modelport import api
from modelport.convert.onnx.nbits import from_float
from modelport.formats.errors import Unsupported
from modelport.samples import tiny

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")
from onnx import TensorProto, helper  # noqa: E402

from test_onnx_quant import nbits_matrix  # noqa: E402
from modelport.convert.onnx.nbits import NBits  # noqa: E402
from modelport.formats.model import MemorySlice  # noqa: E402

DTYPES = {np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}


def matmul_nbits_weights(path) -> dict[str, NBits]:
    """The MatMulNBits weights of a written model, by the HF name of the weight."""
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            a = {x.name: x.i for x in node.attribute}
            refs = [MemorySlice.tensor(inits[i], DTYPES[inits[i].dtype]) for i in node.input[1:4] if i]
            out[node.input[1].removesuffix(".qweight")] = NBits(a["K"], a["N"], a["bits"], a["block_size"], *refs,
                                                                *[None] * (3 - len(refs)))
    return out


def dequantize_linear_outputs(path, tmp_path) -> dict[str, dict[str, np.ndarray]]:
    """weight name -> {runtime: the float [K, N] its DequantizeLinear node makes}, computed by onnxruntime and by
    OpenVINO from the written model's own initializers and attributes (one DequantizeLinear node per weight)."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert nodes, "no DequantizeLinear weights"
    outputs = [n.input[0] for n in nodes]
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", list(n.input), [n.input[0] + ".out"],
                          **{a.name: a.i for a in n.attribute}) for n in nodes], "dq", [],
        [helper.make_tensor_value_info(n.input[0] + ".out", inits[n.input[1]].data_type, list(inits[n.input[0]].dims))
         for n in nodes],
        [inits[i] for n in nodes for i in n.input if i])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(probe)
    file = tmp_path / "dq.onnx"
    onnx.save_model(probe, str(file))
    by_ort = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"]).run(None, {})
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(file)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    by_ov = compiled({})
    return {o.removesuffix(".quantized"): {"onnxruntime": by_ort[i], "openvino": by_ov[compiled.outputs[i]]}
            for i, o in enumerate(outputs)}


@pytest.fixture(scope="module")
def q4_0(checkpoints, tmp_path_factory):
    """The tiny llama as a Q4_0 GGUF made by our quantizer (its tied embedding falls back to Q8_0, rows of 64)."""
    path = tmp_path_factory.mktemp("q4_0") / "q4_0.gguf"
    api.convert(checkpoints("llama"), path, quant="Q4_0")
    return path


def test_q4_0_gguf_to_qdq_is_exact_and_runs_in_onnxruntime_and_openvino(q4_0, tmp_path):
    out, f32 = tmp_path / "qdq", tmp_path / "f32.gguf"
    r = run_cli("convert", q4_0, out, "--to", "onnx", "--ops", "qdq")
    assert r.returncode == 0, r.stderr
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    onnx.checker.check_model(str(out / "model.onnx"))
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import} == {"ai.onnx": 21}
    assert not [n.op_type for n in model.graph.node if n.op_type in ("MatMulNBits", "GroupQueryAttention")]

    # every Q4_0 weight: signed INT4 blocks of 32 without a zero point, dequantizing to gguf-py's values exactly
    pivot = api.load(q4_0)
    q4 = {n for n, ref in pivot.tensors.items() if ref.result_dtype == "Q4_0"}
    types = {t.name: t.data_type for t in model.graph.initializer}
    dq = dequantize_linear_outputs(out / "model.onnx", tmp_path)
    assert q4 and q4 <= set(dq)
    for name, got in dq.items():
        ref = pivot.tensors[name]
        want = dequantize(ref.read(), GGMLQuantizationType[ref.result_dtype]).reshape(ref.shape).T
        for runtime, values in got.items():
            assert np.array_equal(values, want), f"{name} ({ref.result_dtype}) in {runtime}"
        if name in q4:
            assert types[name + ".quantized"] == TensorProto.INT4 and name + ".zero_points" not in types

    # the model: llama.cpp on the GGUF dequantized to f32 is the reference, through `modelport validate`
    api.convert(q4_0, f32, dtype="f32")
    kl = {}
    for runtime in ("onnxruntime", "openvino"):
        report = api.validate(f32, out, texts={"mixed": tiny.mixed_text()}, max_kl=1e-4,
                              runtime=None if runtime == "onnxruntime" else runtime)
        assert report.passed, (report.failed_gates, report.overall)
        assert report.candidate.type == "INT4" and runtime in report.candidate.runtime
        kl[runtime] = report.overall["kl_mean"]
    print("mean KL vs llama.cpp on the f32-dequantized GGUF:", {k: f"{v:.3g}" for k, v in kl.items()})

    back = api.load(out)  # the reader gives the float values the graph computes with
    for name in q4:
        want = dequantize(pivot.tensors[name].read(), GGMLQuantizationType.Q4_0).reshape(pivot.tensors[name].shape)
        assert np.array_equal(back.tensors[name].read(), want), name


@pytest.mark.parametrize("quant,dtype", [("int4", "f32"), ("int8", "f16")])
def test_hf_qdq_weights_equal_the_matmulnbits_export(checkpoints, tmp_path, quant, dtype):
    """The same HF model to --ops ort (MatMulNBits) and --ops qdq: onnxruntime and OpenVINO dequantize the QDQ weights
    to the values onnxruntime computes the MatMulNBits ones with, and the reader reads both back alike. The tied
    embedding is int4 only with --ops ort (GatherBlockQuantized, a contrib op); qdq keeps it float."""
    hf, nbits_out, qdq_out = checkpoints("llama"), tmp_path / "nbits.onnx", tmp_path / "qdq.onnx"
    for ops, out in (("ort", nbits_out), ("qdq", qdq_out)):
        api.convert(hf, out, to="onnx", ops=ops, quant=quant, dtype=dtype)
    dq, nbits = dequantize_linear_outputs(qdq_out, tmp_path), matmul_nbits_weights(nbits_out)
    embedding = {"model.embed_tokens.weight"} if quant == "int4" else set()
    assert set(dq) == set(nbits) - embedding
    for name, got in dq.items():
        want = nbits_matrix(nbits[name], np.float16 if dtype == "f16" else np.float32).T
        assert np.array_equal(got["onnxruntime"], want) and np.array_equal(got["openvino"], want), name
    a, b = api.load(nbits_out), api.load(qdq_out)
    assert list(a.tensors) == list(b.tensors)
    assert all(np.array_equal(ref.read(), b.tensors[name].read()) for name, ref in a.tensors.items()
               if name not in embedding)


def test_partial_blocks_become_smaller_whole_ones(checkpoints, tmp_path):
    """Block 128 on the tiny llama (K = 64, and 192 for down_proj): OpenVINO refuses a partial last block, so each
    weight takes the largest power-of-two block that divides its K (64 here, noted), holding the values of
    onnxruntime's quantizer at that block."""
    hf, out = checkpoints("llama"), tmp_path / "qdq.onnx"
    result = api.convert(hf, out, to="onnx", ops="qdq", quant="int4", block_size=128)
    blocks = {n.input[0].removesuffix(".quantized"): {a.name: a.i for a in n.attribute}["block_size"]
              for n in onnx.load(str(out), load_external_data=False).graph.node if n.op_type == "DequantizeLinear"}
    assert set(blocks.values()) == {64}
    assert {f["name"] for f in result.fallbacks} == set(blocks)
    pivot = api.load(hf)
    for name, got in dequantize_linear_outputs(out, tmp_path).items():
        want = nbits_matrix(from_float(pivot.tensors[name], 4, 64)).T
        assert np.array_equal(got["onnxruntime"], want) and np.array_equal(got["openvino"], want), name


def test_tensorrt_target_writes_symmetric_int4(checkpoints, tmp_path):
    """--target tensorrt: qdq, f16, signed INT4 without zero points (TensorRT takes no INT4 zero points), the values
    of onnxruntime's symmetric MatMulNBits quantizer."""
    hf, out = checkpoints("llama"), tmp_path / "trt.onnx"
    r = run_cli("convert", hf, out, "--to", "onnx", "--target", "tensorrt", "--quant", "int4")
    assert r.returncode == 0, r.stderr
    assert "--ops qdq" in r.stderr and "--dtype f16" in r.stderr
    types = {t.name: t.data_type for t in onnx.load(str(out), load_external_data=False).graph.initializer}
    pivot = api.load(hf)
    for name, got in dequantize_linear_outputs(out, tmp_path).items():
        assert types[name + ".quantized"] == TensorProto.INT4 and name + ".zero_points" not in types
        want = nbits_matrix(from_float(pivot.tensors[name], 4, 32, "F16", symmetric=True), np.float16).T
        assert np.array_equal(got["onnxruntime"].astype(np.float16), want), name


def test_targets_refuse_what_they_cannot_run(checkpoints, tmp_path):
    hf = checkpoints("llama")
    r = run_cli("convert", hf, tmp_path / "out", "--to", "onnx", "--target", "openvino", "--ops", "ort", "--quant",
                "int4")
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1
    assert "--target openvino" in r.stderr and "it runs --ops qdq (--quant int4, int8), --ops portable" in r.stderr
    cases = {(("target", "migraphx"), ("quant", "int8")): "it runs --ops portable",
             (("target", "tensorrt"), ("ops", "qdq"), ("quant", "int8")): "it runs --ops portable, --ops qdq "
                                                                           "(--quant int4)",
             (("target", "coreml"), ("ops", "ort")): "it runs --ops portable",
             (("target", "cuda"), ("dtype", "f32")): "runs --ops ort in --dtype f16 or --dtype bf16 only",
             (("ops", "portable"), ("quant", "int4")): "--ops ort or --ops qdq"}
    for options, names in cases.items():
        with pytest.raises(Unsupported, match=re.escape(names)):
            api.convert(hf, tmp_path / "out", to="onnx", **dict(options))
    assert not list(tmp_path.iterdir())
    r = run_cli("targets", "--json")
    rows = {row["target"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"cpu", "cuda", "tensorrt", "rocm", "migraphx", "directml", "coreml", "openvino", "qnn",
                         "webgpu"}
    assert all(row["source"] and row["checked"] for row in rows.values())
    assert rows["openvino"]["ops"] == ["qdq", "portable"] and rows["openvino"]["checked"].startswith("run here")
    assert rows["cuda"]["checked"].startswith("run here") and rows["cuda"]["floats"] == {"ort": ["f16", "bf16"]}


def test_openvino_target_float_graph_runs_as_transformers(checkpoints, hf_reference, tmp_path):
    """--target openvino without --quant: the portable set at opset 21 (ReduceMean's axes as an input), float
    weights, in OpenVINO's own runtime against transformers fp32."""
    from modelport.validators.runtimes import OpenVino

    out = tmp_path / "ov"
    result = api.convert(checkpoints("llama"), out, to="onnx", target="openvino")
    assert result.fallbacks == [{"name": "ov", "fallback": "--target openvino: --ops qdq"}]
    ids, want = hf_reference("llama")
    got = OpenVino(out).logits(ids)
    assert np.abs(got - want).max() <= 1e-4
