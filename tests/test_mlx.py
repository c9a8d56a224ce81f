"""MLX output and input, checked in mlx-lm itself (mlx-cpu on Linux): float folders compute what transformers does,
quantized ones are byte for byte what mlx_lm.convert writes, GGUF blocks transcode without a new rounding, and
folders mlx_lm.convert wrote come back as the values MLX computes with."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from safetensors.numpy import load_file, save_file

from modelport import api
from modelport.convert.dtypes import to_f32
from modelport.convert.mlx import affine
from modelport.formats.errors import BadInput
from modelport.formats.safetensors import read_header
from support.cli import run_cli
from support.variants import variant

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")
from mlx_lm.utils import load_model  # noqa: E402

# tiny sample -> family; every one of ours that mlx-lm runs and samples/tiny.py makes
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "gemma", "gemma2", "gemma3",
            "phi3", "starcoder2", "granite"]
IDS = [1, 510, 3290, 17, 2501, 99, 4000, 7, 31000, 12, 64, 5000, 250, 8, 1000, 42]  # in every tiny vocabulary
# mlx-lm 0.30+ rotates LongRoPE with its long factors at every length (rope_utils.SuScaledRoPE), where transformers
# (and mlx-lm 0.29) take the short ones up to original_max_position_embeddings: phi3 is compared past that switch
PAST_THE_SWITCH = {"phi3": {"original_max_position_embeddings": len(IDS) // 2}}


def kl_mean(ref: np.ndarray, cand: np.ndarray) -> float:
    lp = ref - np.logaddexp.reduce(ref, -1, keepdims=True)
    lq = cand - np.logaddexp.reduce(cand, -1, keepdims=True)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def mlx_logits(folder, ids=IDS) -> np.ndarray:
    model, _ = load_model(folder)
    return np.array(model(mx.array([ids]))[0].astype(mx.float32), dtype=np.float64)


def llama_cpp_logits(path, ids=IDS) -> np.ndarray:
    from modelport.validators.runtimes import LlamaCpp

    return LlamaCpp(path, n_ctx=64).logits(ids).astype(np.float64)


def hf_logits(folder, ids=IDS) -> np.ndarray:
    from modelport.validators.runtimes import Transformers

    return Transformers(folder).logits(ids).astype(np.float64)


def tensors(folder) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(folder.glob("model*.safetensors")):
        out.update(load_file(f))
    return out


def config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def test_each_family_names_the_mlx_lm_module_that_loads_it():
    """Arch.mlx is the module mlx-lm itself picks for the family's model_type, and every such family is tested here."""
    from mlx_lm.utils import _get_classes

    from modelport.convert import archs
    from modelport.samples import tiny

    ours = {a.name: a.mlx for a in archs.registry().values() if a.mlx}
    assert {name: _get_classes({"model_type": name})[0].__module__.rsplit(".", 1)[1] for name in ours} == ours
    assert {tiny.SAMPLES[f].family for f in FAMILIES} == set(ours)


def test_a_family_mlx_lm_does_not_run_is_refused_before_writing(checkpoints, tmp_path):
    dst = tmp_path / "gpt2-mlx"
    r = run_cli("convert", checkpoints("gpt2"), dst, "--to", "mlx")
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert "mlx-lm has no model for 'gpt2'" in r.stderr and not dst.exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_to_mlx_f32_runs_in_mlx_lm_as_in_transformers(family, checkpoints, tmp_path):
    src = checkpoints(family)
    if family in PAST_THE_SWITCH:
        src = variant(src, tmp_path / "src", **PAST_THE_SWITCH[family])
    dst = tmp_path / "mlx"
    api.convert(src, dst, to="mlx", dtype="f32")
    kl = kl_mean(hf_logits(src), mlx_logits(dst))
    assert kl <= 1e-5, f"{family}: mean KL {kl:.3g}"


@pytest.fixture(scope="module")
def mlx_lm_made(checkpoints, tmp_path_factory):
    """(family, quant, group) -> the folder mlx_lm.convert writes from the tiny sample."""
    made = {}
    root = tmp_path_factory.mktemp("mlx_lm")

    def get(family: str, quant: str, group: int):
        key = (family, quant, group)
        if key not in made:
            out = root / f"{family}-{quant}-{group}"
            recipe = quant if quant.startswith("mixed") else None
            bits = int(quant.removesuffix("bit")) if recipe is None else 4
            mlx_lm.convert(str(checkpoints(family)), str(out), quantize=True, q_bits=bits, q_group_size=group,
                           quant_predicate=recipe)
            made[key] = out
        return made[key]

    return get


@pytest.mark.parametrize("family,quant,group", [("llama", "4bit", 64), ("llama", "8bit", 32),
                                                ("llama", "mixed_4_6", 64), ("mistral", "mixed_3_6", 64),
                                                ("qwen3_moe", "4bit", 64)])
def test_quantized_bytes_equal_mlx_lm_convert(family, quant, group, checkpoints, mlx_lm_made, tmp_path):
    theirs = mlx_lm_made(family, quant, group)
    ours = tmp_path / "ours"
    api.convert(checkpoints(family), ours, to="mlx", quant=quant, group_size=group)
    a, b = tensors(ours), tensors(theirs)
    assert sorted(a) == sorted(b)
    assert any(n.endswith(".scales") for n in a)
    differ = [n for n in a if a[n].dtype != b[n].dtype or a[n].shape != b[n].shape or a[n].tobytes() != b[n].tobytes()]
    assert not differ, f"{len(differ)} tensors differ from mlx_lm.convert's, first {differ[0]}"
    assert config(ours)["quantization"] == config(theirs)["quantization"]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_reading_gives_what_mx_dequantize_gives(bits, dtype, tmp_path):
    w = mx.array(np.random.default_rng(bits).standard_normal((6, 128)).astype(np.float32)).astype(getattr(mx, dtype))
    wq, s, b = mx.quantize(w, group_size=32, bits=bits)
    expected = mx.dequantize(wq, s, b, group_size=32, bits=bits).astype(mx.float32)
    mx.save_safetensors(str(tmp_path / "t.safetensors"), {"x.weight": wq, "x.scales": s, "x.biases": b})
    refs, _ = read_header(tmp_path / "t.safetensors")
    got = affine.dequantized(refs["x.weight"], refs["x.scales"], refs["x.biases"], bits, 32)
    assert got.result_dtype == {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]
    assert np.array_equal(to_f32(got.read(), got.result_dtype), np.array(expected))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_blocks_transcode_exactly(qtype, checkpoints, tmp_path):
    gguf_path, dst = tmp_path / "m.gguf", tmp_path / "mlx"
    api.convert(checkpoints("llama"), gguf_path, quant=qtype)
    api.convert(gguf_path, dst, to="mlx", dtype="f32")  # the norms stay f32 as in the GGUF (mlx-lm's default: f16)
    pivot = api.load(gguf_path)
    cfg, stored = config(dst), mx.load(str(dst / "model.safetensors"))
    checked = 0
    for name, ref in pivot.tensors.items():
        if ref.result_dtype != qtype:
            continue
        module = name.removesuffix(".weight")
        params = cfg["quantization"].get(module, cfg["quantization"])
        assert (params["bits"], params["group_size"]) == (affine.BLOCKS[qtype][0], 32)
        got = mx.dequantize(stored[f"{module}.weight"], stored[f"{module}.scales"], stored[f"{module}.biases"],
                            group_size=32, bits=params["bits"])
        expected = gguf_dequantize(ref.read(), GGMLQuantizationType[qtype]).reshape(ref.shape)
        assert np.array_equal(np.array(got), expected), name
        checked += 1
    assert checked >= 7  # every linear layer of both blocks at least
    dequantized = tmp_path / "f32.gguf"  # the same values in f32: what llama.cpp computes with, unrounded
    api.convert(gguf_path, dequantized, dtype="f32")
    kl = kl_mean(llama_cpp_logits(dequantized), mlx_logits(dst))
    assert kl <= 1e-5, f"{qtype}: mean KL {kl:.3g} between llama.cpp and mlx-lm"  # measured ~1e-12


def test_onnx_to_mlx_and_mlx_in_diff_and_inspect(checkpoints, tmp_path):
    onnx_dir, dst = tmp_path / "onnx", tmp_path / "mlx"
    api.convert(checkpoints("llama"), onnx_dir, to="onnx", dtype="f32")
    api.convert(onnx_dir, dst, to="mlx", dtype="f32")
    kl = kl_mean(hf_logits(checkpoints("llama")), mlx_logits(dst))
    assert kl <= 1e-5, f"mean KL {kl:.3g}"
    r = run_cli("diff", checkpoints("llama"), dst, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)["summary"]
    assert summary["bit_exact"] == summary["tensors"] > 0, summary  # f32 through ONNX to MLX: the same values
    quantized = tmp_path / "mlx-4bit"  # a float MLX folder is an HF folder; a quantized one is told apart
    api.convert(onnx_dir, quantized, to="mlx", quant="4bit")
    r = run_cli("inspect", quantized, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["format"] == "mlx", r.stderr


def test_mlx_lm_folder_to_hf_and_gguf(checkpoints, mlx_lm_made, tmp_path):
    theirs = mlx_lm_made("llama", "4bit", 64)
    hf, gguf_path = tmp_path / "hf", tmp_path / "q8.gguf"
    api.convert(theirs, hf, dtype="f32")
    kl = kl_mean(mlx_logits(theirs), hf_logits(hf))
    assert kl <= 1e-5, f"mean KL {kl:.3g}"
    api.convert(theirs, gguf_path, quant="Q8_0")
    report = api.validate(theirs, gguf_path)  # the built-in texts the q8 tier was measured on
    assert report.tier == "q8" and report.passed, report.to_json()


@pytest.mark.parametrize("defect,cli", [("bits", True), ("group_size", False), ("missing scales", False)])
def test_quantization_section_that_disagrees_is_refused(defect, cli, mlx_lm_made, tmp_path):
    bad, dst = tmp_path / "bad", tmp_path / "out"
    shutil.copytree(mlx_lm_made("llama", "4bit", 64), bad)
    cfg = config(bad)
    if defect == "missing scales":
        t = tensors(bad)
        del t["model.layers.1.mlp.up_proj.scales"]
        save_file(t, str(bad / "model.safetensors"), metadata={"format": "mlx"})
        index = json.loads((bad / "model.safetensors.index.json").read_text())
        del index["weight_map"]["model.layers.1.mlp.up_proj.scales"]
        (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        cfg["quantization"][defect] = {"bits": 8, "group_size": 32}[defect]
        (bad / "config.json").write_text(json.dumps(cfg))
    if cli:  # the CLI's one line and exit code; the others through the API (same error, no process start)
        r = run_cli("convert", bad, dst)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and str(bad) in r.stderr, r.stderr
    else:
        with pytest.raises(BadInput) as e:
            api.convert(bad, dst)
        assert e.value.exit_code == 2 and "\n" not in str(e.value) and str(bad) in str(e.value), str(e.value)
    assert not dst.exists() and not list(tmp_path.glob("out.partial*"))
