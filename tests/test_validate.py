"""`modelport validate` catches real conversion bugs: broken GGUF variants of a clean tiny-llama conversion fail a
named gate (exit 1) while the clean f16 and Q8_0 conversions pass (exit 0); the JSON schema is pinned."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from modelport import api
from modelport.convert.gguf import map as gguf_map
from modelport.convert.archs.base import unpermute
from modelport.formats import gguf
from modelport.convert.gguf.codec import file_type_name
from modelport.validators import gates, memory, runtimes
from modelport.validators.diff import diff
from modelport.validators.parity import SCHEMA, Report

from support.cli import run_cli



def _set(kv, key, value):
    """kv list with `key` set (appended when absent), its GGUF type kept or guessed from the value."""
    from gguf import GGUFValueType
    for i, (k, _, t, sub) in enumerate(kv):
        if k == key:
            return kv[:i] + [(k, value, t, sub)] + kv[i + 1:]
    return kv + [(key, value, GGUFValueType.get_type(value), None)]


def _skip_qk_permute(model):
    cfg = model.config
    heads = {"q_proj": cfg["num_attention_heads"], "k_proj": cfg["num_key_value_heads"]}
    for name, ref in list(model.tensors.items()):
        for proj, n in heads.items():
            if f"self_attn.{proj}.weight" in name:  # undone here, redone by to_gguf: the GGUF gets HF's layout
                model.tensors[name] = ref.map(lambda a, n=n: unpermute(a, n))
    return model


def _swap_layers(tensors):
    swap = {"blk.0.": "blk.1.", "blk.1.": "blk.0."}
    return [(next((b + name[len(a):] for a, b in swap.items() if name.startswith(a)), name), ref)
            for name, ref in tensors]


def _transpose(tensors, target="blk.0.attn_output.weight"):
    return [(n, r.map(lambda a: np.ascontiguousarray(a.T)) if n == target else r) for n, r in tensors]


def _rotate_tokens(kv):
    tokens = next(v for k, v, _, _ in kv if k == "tokenizer.ggml.tokens")
    return _set(kv, "tokenizer.ggml.tokens", tokens[1:] + tokens[:1])


# defect -> (pivot edit, kv edit, tensor edit, gates it must fail, HF tensors diff must name (None: not a tensor bug))
LAYER = ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
DEFECTS = {
    "qk_permute_skipped": (_skip_qk_permute, None, None, {"kl_mean"},
                           {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in "qk"}),
    "layers_swapped": (None, None, _swap_layers, {"kl_mean"},
                       {f"model.layers.{i}.{t}.weight" for i in (0, 1) for t in LAYER}),
    "rope_theta_wrong": (None, lambda kv: _set(kv, "llama.rope.freq_base", 10000.0), None, {"kl_mean"}, None),
    "rms_eps_wrong": (None, lambda kv: _set(kv, "llama.attention.layer_norm_rms_epsilon", 1e-2), None, {"kl_mean"},
                      None),
    "bos_not_added": (None, lambda kv: _set(kv, "tokenizer.ggml.add_bos_token", False), None, {"tokenizer"}, None),
    "attn_output_transposed": (None, None, _transpose, {"kl_mean"}, {"model.layers.0.self_attn.o_proj.weight"}),
    "token_ids_shifted": (None, _rotate_tokens, None, {"tokenizer"}, None),
}


def build(hf, dst, pivot_edit=None, kv_edit=None, tensor_edit=None, dtype="F16"):
    """A GGUF of `hf` through our own converter, with one defect injected before writing."""
    model = api.load(hf)
    if pivot_edit:
        model = pivot_edit(model)
    arch, kv, tensors, _ = gguf_map.to_gguf(model, dtype, {}, dst)
    kv = kv_edit(kv) if kv_edit else kv
    tensors = tensor_edit(tensors) if tensor_edit else tensors
    gguf.write(dst, arch, kv, tensors)
    return dst


@pytest.fixture(scope="module")
def tiny_llama(checkpoints):
    return checkpoints("llama")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """The built-in code text plus the first ~200 tokens of the long one: short enough to keep the suite quick, long
    enough for positional (rope) bugs to show."""
    from modelport.validators.texts import builtin
    t = builtin()
    path = tmp_path_factory.mktemp("texts") / "sample.txt"
    path.write_text(t["code"] + "\n" + t["long"][:1000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sample(text_file):
    return {"sample": text_file.read_text(encoding="utf-8")}


@pytest.fixture(scope="module")
def clean(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    f16 = root / "f16.gguf"
    api.convert(tiny_llama, f16, dtype="f16")
    q8 = root / "q8.gguf"
    api.convert(tiny_llama, q8, quant="Q8_0")
    return {"f16": f16, "q8_0": q8}


def test_llama_cpp_loads_without_extra_buffer_types(clean):
    """Every model llama.cpp loads for us has ggml's extra buffer types off (AMX crashes on quantized models; repacked
    weights are a second copy in memory): the parameters llama-cpp-python passed to llama.cpp say so."""
    r = runtimes.LlamaCpp(clean["q8_0"], n_ctx=64)
    try:
        assert r.llm.model_params.use_extra_bufts is False
    finally:
        r.close()


def test_clean_f16_passes(tiny_llama, clean, text_file, tmp_path):
    junit = tmp_path / "gates.xml"
    r = run_cli("validate", tiny_llama, clean["f16"], "--text-file", text_file, "--json", "--junit", junit)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["failed_gates"] == []
    assert rep["candidate"]["type"] == "F16" and rep["tier"] == "f16"
    assert all(t["tokenizer"]["match"] for t in rep["texts"])
    cases = ET.parse(junit).getroot().findall("testcase")
    assert {c.get("name") for c in cases} == set(rep["gates"]) and not any(c.find("failure") is not None for c in cases)


def test_clean_q8_0_passes_on_the_builtin_texts(tiny_llama, clean):
    rep = api.validate(tiny_llama, clean["q8_0"])
    assert rep.passed, rep.gates
    assert rep.candidate.type == "Q8_0" and rep.tier == "q8"
    assert [t["name"] for t in rep.texts] == ["prose", "code", "cjk", "emoji", "whitespace", "long"]
    assert rep.texts[-1]["tokens"] > 900 and all(t["tokenizer"]["match"] for t in rep.texts)


@pytest.mark.parametrize("defect", DEFECTS)
def test_defect_fails_a_named_gate(defect, tiny_llama, sample, tmp_path):
    pivot_edit, kv_edit, tensor_edit, must_fail, tensor_names = DEFECTS[defect]
    broken = build(tiny_llama, tmp_path / f"{defect}.gguf", pivot_edit, kv_edit, tensor_edit)
    rep = api.validate(tiny_llama, broken, texts=sample)
    assert not rep.passed and must_fail <= set(rep.failed_gates), rep.gates
    if tensor_names:  # diff points at the broken tensor by name
        d = diff(tiny_llama, broken)
        assert d.summary["worst"] in tensor_names
        assert {t["name"] for t in d.tensors if t["cosine"] < 0.99} <= tensor_names


def test_cli_exits_1_naming_the_gate(tiny_llama, text_file, tmp_path):
    broken = build(tiny_llama, tmp_path / "qk.gguf", pivot_edit=_skip_qk_permute)
    junit = tmp_path / "gates.xml"
    r = run_cli("validate", tiny_llama, broken, "--text-file", text_file, "--junit", junit)
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "kl_mean" in r.stdout
    assert r.stderr.startswith("modelport: validation failed: ") and "kl_mean" in r.stderr
    failures = [c.get("name") for c in ET.parse(junit).getroot().findall("testcase") if c.find("failure") is not None]
    assert "kl_mean" in failures and "tokenizer" not in failures


def test_json_schema_is_stable(tiny_llama, clean, sample):
    """The keys and types of `validate --json` (README "Validation JSON"); changing them is a schema bump."""
    rep = api.validate(tiny_llama, clean["f16"], texts=sample)
    assert isinstance(rep, Report)
    d = json.loads(json.dumps(rep.to_json()))
    side = {"path": str, "format": str, "runtime": str, "type": str, "parameters": int}
    metric = {"positions": int, "kl_mean": float, "kl_p99": float, "kl_max": float, "top1": float,
              "max_abs_diff": float, "ppl_ref": float, "ppl_cand": float, "ppl_ratio": float}
    assert {k: type(v) for k, v in d.items()} == {
        "schema": str, "passed": bool, "failed_gates": list, "reference": dict, "candidate": dict, "tier": str,
        "gates": dict, "overall": dict, "texts": list, "seconds": float}
    assert d["schema"] == SCHEMA == "modelport.validate/1"
    for s in (d["reference"], d["candidate"]):
        assert {k: type(v) for k, v in s.items()} == side
    assert {k: type(v) for k, v in d["overall"].items()} == metric
    assert set(d["gates"]) == {"tokenizer", "kl_mean", "top1", "ppl_ratio"}
    for g in d["gates"].values():
        assert set(g) == {"limit", "value", "passed", "detail"} and isinstance(g["passed"], bool)
    t = d["texts"][0]
    assert {k: type(v) for k, v in t.items()} == {"name": str, "tokens": int, "tokenizer": dict, **metric}
    assert set(t["tokenizer"]) == {"match", "ref_tokens", "cand_tokens", "first_mismatch"}


def test_first_tokenizer_mismatch_is_shown(tiny_llama, text_file, tmp_path):
    broken = build(tiny_llama, tmp_path / "nobos.gguf", kv_edit=DEFECTS["bos_not_added"][1])
    rep = api.validate(tiny_llama, broken, texts={"s": "Hello world"})
    tok = rep.texts[0]["tokenizer"]
    assert tok["first_mismatch"]["position"] == 0 and tok["first_mismatch"]["ref_id"] == 128000
    assert tok["ref_tokens"] == tok["cand_tokens"] + 1


def test_gate_flags_override_defaults(tiny_llama, clean):
    short = {"s": "Flags override the defaults of the candidate's tier."}
    rep = api.validate(tiny_llama, clean["q8_0"], texts=short, max_kl=1e-9)
    assert "kl_mean" in rep.failed_gates and rep.gates["kl_mean"]["limit"] == 1e-9
    assert rep.gates["top1"]["limit"] == gates.TIERS["q8"].min_top1


def test_default_gates_get_tighter_with_precision():
    order = ["f32", "f16", "q8", "q6", "q5", "q4", "q4_0", "q3", "q2"]
    for a, b in zip(order, order[1:]):
        la, lb = gates.TIERS[a], gates.TIERS[b]
        assert la.max_kl < lb.max_kl and la.min_top1 > lb.min_top1 and la.max_ppl_ratio < lb.max_ppl_ratio
    assert file_type_name(15) == "Q4_K_M" and gates.TIER_OF["Q4_K_M"] == "q4"


def test_bad_inputs_exit_codes(tiny_llama, clean, tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\xff" * 16)
    r = run_cli("validate", tiny_llama, onnx)
    assert r.returncode == 2 and "not a valid ONNX model" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("validate", tiny_llama, tmp_path / "missing.gguf")
    assert r.returncode == 2 and "does not exist" in r.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    r = run_cli("validate", tiny_llama, clean["f16"], "--text-file", empty)
    assert r.returncode == 2 and "empty" in r.stderr


def test_memory_refusal_is_early_and_clear():
    needs = {"reference held in fp32 (4 bytes per parameter)": memory.in_memory(8_000_000_000),
             "candidate as stored": memory.stored(5 << 30)}
    with pytest.raises(Exception) as e:
        memory.check(needs, available=16 << 30)
    assert e.value.exit_code == 2 and "GiB" in str(e.value) and "fp32" in str(e.value)
    memory.check({"candidate as stored": memory.stored(5 << 30)}, available=16 << 30)  # the sides run in turn
    assert memory.available_bytes() is None or memory.available_bytes() > 0


def _chromium() -> str | None:
    """Debian's chromium, installed with apt-get when missing (the slow tests may set up what they need)."""
    import shutil
    import subprocess
    exe = shutil.which("chromium")
    if exe is None and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], capture_output=True)
        exe = shutil.which("chromium")
    return exe


@pytest.mark.slow
def test_html_report_renders_in_headless_chromium(tiny_llama, clean, text_file, tmp_path):
    import subprocess
    html = tmp_path / "report.html"
    r = run_cli("validate", tiny_llama, clean["q8_0"], "--text-file", text_file, "--report", html)
    assert r.returncode == 0, r.stderr
    page = html.read_text(encoding="utf-8")
    assert page.count("src='data:image/png;base64,") == 2 and "KL per position" in page and "Per-tensor error" in page
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed and apt-get could not install it")
    shot = tmp_path / "shot.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400", f"--screenshot={shot}",
                    html.as_uri()], capture_output=True, timeout=120)
    from PIL import Image
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] >= 1000
    # the plots are rendered: many distinct colours (matplotlib lines and bars), not a blank or text-only page
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200
