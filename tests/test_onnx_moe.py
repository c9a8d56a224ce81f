"""The ONNX builder's mixture-of-experts block (convert/onnx/moe.py) beyond what every builder family gets in
tests/test_onnx_export.py and tests/test_onnx_import.py: with --ops ort --quant int4 each expert weight is the bytes
onnxruntime's MatMulNBitsQuantizer makes of it (issue 13, acceptance 2), stacked for one QMoE node per layer; int8
QMoE, which onnxruntime's CPU kernel does not compute on the MatMulNBits grid, is refused; a GGUF's expert blocks go
into QMoE where it has their grid, else dequantized into the float MoE."""
from __future__ import annotations

import json
import shutil

import pytest

from modelport import api
from modelport.convert import archs

from support.cli import run_cli
from support.quantize import ort_matmulnbits

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

FAMILY = "qwen2_moe"  # routed experts, a shared expert and its gate, no renormalisation


def test_int4_experts_are_onnxruntimes_quantizer_bytes_for_one_qmoe_per_layer(checkpoints, tmp_path):
    src = checkpoints(FAMILY)
    out = tmp_path / "onnx"
    api.convert(src, out, to="onnx", ops="ort", quant="int4")
    proto = onnx.load(str(out / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    model = api.load(src)
    e = archs.for_hf(FAMILY).onnx.decoder.experts
    cfg = archs.for_hf(FAMILY).normalize(model.config)
    assert sum(n.op_type == "QMoE" for n in proto.graph.node) == cfg["num_hidden_layers"]
    checked = 0
    for layer in range(cfg["num_hidden_layers"]):
        for xid in range(e.count(cfg)):
            for projection in e.expert:
                name = f"model.layers.{layer}.{projection.format(xid=xid)}.weight"
                assert name not in inits, "a quantized expert keeps no float copy"
                want = ort_matmulnbits(model.tensors[name].read(), 4, 32)
                for part, data in want.items():
                    assert inits[f"{name}.{part}"].tobytes() == data, (name, part)
                checked += 1
    assert checked == cfg["num_hidden_layers"] * e.count(cfg) * 3
    assert not any(n.op_type == "MatMulNBits" and ".experts." in n.input[1] for n in proto.graph.node)


def test_int8_with_ort_is_refused_in_one_line_naming_qdq(checkpoints, tmp_path):
    r = run_cli("convert", checkpoints(FAMILY), tmp_path / "o", "--to", "onnx", "--ops", "ort", "--quant", "int8")
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert "QMoE" in r.stderr and "--ops qdq" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("preset,op", [("Q4_0", "QMoE"), ("Q8_0", "MoE")])
def test_gguf_experts_keep_their_blocks_where_qmoe_has_them_else_are_dequantized(preset, op, checkpoints, tmp_path):
    """Q4_0 blocks go into QMoE as they are (MatMulNBits 4-bit, block 32); Q8_0 has no QMoE form, so the experts
    are dequantized for the float MoE and the result says so. Either way onnxruntime computes what the same GGUF
    gives through standard operators (every weight dequantized)."""
    from modelport.validators.metrics import logit_parity
    from modelport.validators.runtimes import OnnxRuntime

    from support.quantize import llama_quantize

    api.convert(checkpoints(FAMILY), tmp_path / "f32.gguf", dtype="f32")
    llama_quantize(tmp_path / "f32.gguf", tmp_path / "q.gguf", preset)
    result = api.convert(tmp_path / "q.gguf", tmp_path / "ort", to="onnx", ops="ort")
    api.convert(tmp_path / "q.gguf", tmp_path / "portable", to="onnx", ops="portable")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "ort" / "model.onnx"), load_external_data=False).graph.node}
    assert op in ops and ({"MoE", "QMoE"} - {op}).isdisjoint(ops)
    assert any("QMoE" in f["fallback"] for f in result.fallbacks) == (op == "MoE"), result.fallbacks
    ids = list(range(1, 41))
    parity = logit_parity(OnnxRuntime(tmp_path / "portable").logits(ids), OnnxRuntime(tmp_path / "ort").logits(ids))
    print(f"{FAMILY} {preset} GGUF, ort ({op}) vs portable: {parity}")
    assert parity["kl_mean"] < 1e-4 and parity["top1"] == 1.0, parity


def test_dense_layers_among_the_sparse_ones_are_refused(checkpoints, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(checkpoints(FAMILY), src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "mlp_only_layers": [1]}))
    r = run_cli("convert", src, tmp_path / "o", "--to", "onnx")
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "mlp_only_layers" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
