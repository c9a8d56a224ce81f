"""`modelport diff`: tensors aligned by HF name through the pivot, quantized ones dequantized, errors per tensor."""
from __future__ import annotations

import json

import numpy as np
import pytest

from modelport import api
from modelport.validators.diff import SCHEMA, compare, diff

from support.cli import run_cli


@pytest.fixture(scope="module")
def converted(checkpoints, tmp_path_factory):
    hf = checkpoints("llama")
    root = tmp_path_factory.mktemp("diff")
    out = {"hf": hf, "f32": root / "f32.gguf", "q8": root / "q8.gguf"}
    api.convert(hf, out["f32"], dtype="f32")
    api.convert(hf, out["q8"], quant="Q8_0")
    return out


def test_f32_gguf_is_bit_exact_through_the_pivot(converted):
    """Q/K permuted on the way in and back on the way out: the same bytes under the same HF names."""
    r = run_cli("diff", converted["hf"], converted["f32"], "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["schema"] == SCHEMA == "modelport.diff/1"
    assert d["summary"]["bit_exact"] == d["summary"]["tensors"] == len(d["tensors"]) > 0
    assert d["only_in_a"] == d["only_in_b"] == []
    assert all(t["snr_db"] is None and t["max_abs"] == 0 for t in d["tensors"])


def test_quantized_tensors_are_dequantized_and_compared(converted):
    r = run_cli("diff", converted["hf"], converted["q8"], "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    row = {k: type(v) for k, v in d["tensors"][0].items()}
    assert set(row) == {"name", "shape", "shape_b", "dtype_a", "dtype_b", "max_abs", "rmse", "cosine", "snr_db",
                        "bit_exact"}
    assert set(d["summary"]) == {"tensors", "bit_exact", "shape_mismatches", "worst", "worst_cosine", "min_snr_db",
                                 "max_abs"}
    q = [t for t in d["tensors"] if t["dtype_b"] == "Q8_0"]
    assert q and all(t["cosine"] > 0.9999 and 35 < t["snr_db"] < 60 and not t["bit_exact"] for t in q)
    norms = [t for t in d["tensors"] if "norm" in t["name"]]
    assert norms and all(t["bit_exact"] for t in norms)  # 1-D tensors stay F32


def test_table_output_names_the_worst_tensor(converted):
    r = run_cli("diff", converted["hf"], converted["q8"])
    worst = diff(converted["hf"], converted["q8"]).summary["worst"]
    assert r.returncode == 0 and f"worst: {worst}" in " ".join(r.stdout.split())


def test_compare_metrics():
    a = np.array([3.0, 4.0], dtype=np.float32)
    m = compare(a, a * 0.5)
    assert m["cosine"] == pytest.approx(1.0) and m["max_abs"] == pytest.approx(2.0)
    assert m["snr_db"] == pytest.approx(10 * np.log10(25 / 6.25)) and m["rmse"] == pytest.approx(np.sqrt(6.25 / 2))
    assert compare(a, a)["bit_exact"] and compare(a, a)["snr_db"] is None


def test_bad_input(tmp_path):
    r = run_cli("diff", tmp_path / "nope", tmp_path / "nope2")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
