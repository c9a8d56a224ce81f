"""One-pass HF -> quantized GGUF gives the very bytes llama-quantize gives from our lossless GGUF, and runs."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from modelport import api
from modelport.convert import archs
from modelport.convert.gguf import quant_plan
from modelport.formats import gguf, safetensors
from modelport.validators.metrics import logit_parity
from modelport.validators.runtimes import LlamaCpp, Transformers

from support.cli import run_cli
from support.quantize import llama_quantize

QUANTS = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K", "IQ4_NL"]
# (family, torch dtype, shape): rows of 64 (not multiples of 256, K-quants fall back) and rows of 256
MODELS = [("llama", "float32", "tiny"), ("mistral", "float32", "tiny"), ("qwen2", "float32", "tiny"),
          ("qwen3", "float32", "tiny"),
          ("llama", "float32", "wide"), ("qwen2", "bfloat16", "wide")]
LOSSLESS = {"float32": "f32", "bfloat16": "bf16"}


@pytest.fixture(scope="module")
def model_dirs(checkpoints, tmp_path_factory):
    """model -> (HF folder, lossless GGUF in the source precision, ids, transformers fp32 logits)."""
    out = {}
    text = "The quick brown fox jumps over the lazy dog; def f(x): return x * 2  # code"
    for key in MODELS:
        hf = checkpoints(*key)
        lossless = tmp_path_factory.mktemp("lossless") / "m.gguf"
        api.convert(hf, lossless, dtype=LOSSLESS[key[1]])
        ref = Transformers(hf)
        ids = ref.tokenize(text)
        out[key] = (hf, lossless, ids, ref.logits(ids))
    return out


def _kl(path, ids, ref_logits) -> float:
    llm = LlamaCpp(path)
    kl = logit_parity(ref_logits, llm.logits(ids))["kl_mean"]
    assert llm.generate("The", max_tokens=4) is not None
    llm.close()
    return kl


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("model", MODELS, ids=["-".join(m) for m in MODELS])
def test_one_pass_equals_llama_quantize(model, quant, model_dirs, tmp_path):
    hf, lossless, ids, ref_logits = model_dirs[model]
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    r = run_cli("convert", hf, ours, "--quant", quant.lower(), "--json")
    assert r.returncode == 0, r.stderr
    llama_quantize(lossless, theirs, quant)

    a, b = gguf.read(ours), gguf.read(theirs)
    assert list(a.tensors) == list(b.tensors)
    for name, ta in a.tensors.items():
        tb = b.tensors[name]
        assert (ta.dtype, ta.shape) == (tb.dtype, tb.shape), name
        assert ta.stored.read() == tb.stored.read(), f"{name} ({ta.dtype}) differs from llama-quantize's"
    meta = lambda c: {k: v for k, v in c.kv.items() if not k.startswith("modelport.")}  # noqa: E731
    assert meta(a) == meta(b)

    kl_ours, kl_theirs = _kl(ours, ids, ref_logits), _kl(theirs, ids, ref_logits)
    print(f"{'-'.join(model)} {quant}: mean KL ours {kl_ours:.3e}, llama-quantize {kl_theirs:.3e}")
    assert kl_ours <= kl_theirs


def test_unknown_quant_lists_the_valid_ones(checkpoints, tmp_path):
    r = run_cli("convert", checkpoints("llama"), tmp_path / "m.gguf", "--quant", "Q4_K_X")
    assert r.returncode == 2
    assert "unknown quantization 'Q4_K_X'; valid:" in r.stderr and "Q4_K_M" in r.stderr
    assert not list(tmp_path.iterdir())


def test_fallbacks_are_reported_in_json(checkpoints, tmp_path):
    import json
    r = run_cli("convert", checkpoints("llama"), tmp_path / "m.gguf", "--quant", "Q4_K_M", "--json")
    assert r.returncode == 0, r.stderr
    fallbacks = json.loads(r.stdout)["fallbacks"]
    assert fallbacks and all(f["fallback"] and f["type"] != f["requested"] for f in fallbacks)


def test_imatrix_types_refuse_to_run_without_one(checkpoints, tmp_path):
    r = run_cli("convert", checkpoints("llama", "float32", "wide"), tmp_path / "m.gguf", "--quant", "IQ2_XS")
    assert r.returncode == 3 and "--imatrix" in r.stderr
    assert not list(tmp_path.iterdir())


def test_q4_k_m_back_to_hf_is_gguf_py_dequantization(checkpoints, tmp_path, mixed_text):
    hf = checkpoints("llama", "float32", "wide")
    q = tmp_path / "q.gguf"
    api.convert(hf, q, quant="Q4_K_M")
    back = tmp_path / "back"
    assert run_cli("convert", q, back, "--dtype", "f32").returncode == 0

    contents, restored = gguf.read(q), safetensors.read(back)
    arch = archs.for_hf("llama")
    cfg = arch.normalize(restored.config)
    to_hf = {g: (kind, h) for h, (kind, g) in arch.name_map(cfg["num_hidden_layers"]).items()}
    quantized = 0
    for name, ref in contents.tensors.items():
        if name not in to_hf:
            continue  # rope_freqs: made from the config, not a checkpoint tensor
        kind, hf_name = to_hf[name]
        want = ref.read()
        if ref.dtype in ("F32", "F16", "BF16"):
            want = want.astype(np.float32)
        else:
            want = dequantize(want, GGMLQuantizationType[ref.dtype]).reshape(ref.shape)
            quantized += 1
        if kind in arch.hf_transforms:
            want = arch.hf_transforms[kind](want, cfg)
        got = restored.tensors[hf_name]
        assert got.dtype == "F32"
        np.testing.assert_array_equal(got.read(), want, err_msg=hf_name)
    assert quantized >= 7 * cfg["num_hidden_layers"]
    ref = Transformers(back)
    ids = ref.tokenize(mixed_text)
    assert np.isfinite(ref.logits(ids)).all()


@pytest.fixture(scope="module")
def q4_k_m_of_lossless(model_dirs, tmp_path_factory):
    """`modelport quantize` on our lossless GGUF, and llama-quantize on the same file."""
    _, lossless, ids, ref_logits = model_dirs[("llama", "float32", "wide")]
    d = tmp_path_factory.mktemp("requant")
    ours, theirs = d / "ours.gguf", d / "theirs.gguf"
    r = run_cli("quantize", lossless, ours, "--quant", "Q4_K_M")
    assert r.returncode == 0, r.stderr
    llama_quantize(lossless, theirs, "Q4_K_M")
    return ours, theirs


def test_quantize_command_on_a_gguf_equals_llama_quantize(q4_k_m_of_lossless):
    ours, theirs = q4_k_m_of_lossless
    a, b = gguf.read(ours), gguf.read(theirs)
    assert list(a.tensors) == list(b.tensors)
    for name, ta in a.tensors.items():
        assert ta.dtype == b.tensors[name].dtype and ta.stored.read() == b.tensors[name].stored.read(), name
    meta = lambda c: {k: v for k, v in c.kv.items() if not k.startswith("modelport.")}  # noqa: E731
    assert meta(a) == meta(b)


def test_inspect_shows_quant_types_bits_per_weight_and_sizes(q4_k_m_of_lossless):
    import json
    r = run_cli("inspect", q4_k_m_of_lossless[0], "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert {"Q4_K", "Q6_K", "F32"} <= set(info["size"]["bytes_by_type"])
    assert sum(info["size"]["bytes_by_type"].values()) == info["size"]["tensor_bytes"]
    assert 4.5 < info["size"]["bits_per_weight"] < 6.6
    bpw = {t["dtype"]: t["bpw"] for t in info["tensors"]}
    assert bpw["Q4_K"] == 4.5 and bpw["Q6_K"] == 6.5625 and bpw["F32"] == 32
    assert info["metadata"]["general.file_type"] == quant_plan.FILE_TYPE["Q4_K_M"]


def test_requantizing_a_quantized_gguf_equals_llama_quantize(checkpoints, tmp_path):
    """Q8_0 -> Q4_0 dequantizes through gguf-py and quantizes through ggml: llama-quantize --allow-requantize's
    bytes."""
    q8, ours, theirs = tmp_path / "q8.gguf", tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    api.convert(checkpoints("llama", "float32", "wide"), q8, quant="Q8_0")
    r = run_cli("quantize", q8, ours, "--quant", "Q4_0")
    assert r.returncode == 0, r.stderr
    llama_quantize(q8, theirs, "Q4_0", allow_requantize=True)
    a, b = gguf.read(ours), gguf.read(theirs)
    assert list(a.tensors) == list(b.tensors)
    for name, ta in a.tensors.items():
        assert ta.dtype == b.tensors[name].dtype and ta.stored.read() == b.tensors[name].stored.read(), name
