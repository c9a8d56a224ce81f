"""compressed-tensors checkpoints (what vLLM, SGLang and TGI load): written through compressed-tensors' own quantize
and pack, byte for byte what its ModelCompressor writes, loaded by transformers; GGUF Q4_0 / Q8_0 transcoded with
their values kept; compressed-tensors, GPTQ and AWQ folders read back into GGUF and ONNX; bad quantization_configs
refused with one line and nothing written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("compressed_tensors")

from click.testing import CliRunner  # noqa: E402
from compressed_tensors.compressors import ModelCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config  # noqa: E402
from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp  # noqa: E402
from safetensors.numpy import load_file as load_np  # noqa: E402
from safetensors.numpy import save_file as save_np  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from modelport import api  # noqa: E402
from modelport.cli import main as cli  # noqa: E402
from modelport.convert import dtypes  # noqa: E402
from modelport.convert.serving import codec as serving_codec  # noqa: E402
from modelport.formats.errors import Unsupported  # noqa: E402

CT = "compressed-tensors"
FAMILIES = ("llama", "qwen2", "mistral", "mixtral")
# transformers 5 fuses MoE experts and leaves per-expert compressed weights unloaded: validate refuses to run them
UNLOADED_BY_TRANSFORMERS_5 = {"mixtral"}
# scheme id -> (--quant, --group-size, the tiny shape whose rows the group size divides)
SCHEMES = {"W4A16-g128": ("W4A16", 128, "g128"), "W8A16-g32": ("W8A16", 32, "tiny")}
Q8_TIER = dict(max_kl=0.02, min_top1=0.95, max_ppl_ratio=1.05)  # validate's q8 tier, for float candidates


@pytest.fixture(scope="module")
def texts(mixed_text):
    return {"mixed": mixed_text}


def library_compressed(src: Path, qconfig: dict) -> dict[str, torch.Tensor]:
    """What compressed-tensors itself writes for `src` under `qconfig`: the float model with the config applied,
    each module's scale and zero point from the library's own min/max over groups, compressed by ModelCompressor.
    transformers 5 fuses a layer's MoE experts into 3-D parameters, which `targets: [Linear]` does not match: the
    experts are compressed as the nn.Linear modules they are in the hub's layout (and in vLLM), one per expert; its
    renamed router stays the float tensor it is."""
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    hub = load_file(src / "model.safetensors")
    renamed = {n: w for n, w in hub.items() if n not in model.state_dict()}
    state = _compressed(model, qconfig)
    if renamed:
        state = {n: t for n, t in state.items() if n in hub or n.rsplit(".", 1)[0] + ".weight" in hub}
        experts = {n: w for n, w in renamed.items() if ".experts." in n}
        state |= _compressed(_linears(experts), qconfig) | {n: w for n, w in renamed.items() if n not in experts}
    return state


def _compressed(model: torch.nn.Module, qconfig: dict) -> dict[str, torch.Tensor]:
    qc = QuantizationConfig.model_validate({k: v for k, v in qconfig.items() if k in QuantizationConfig.model_fields})
    apply_quantization_config(model, qc)
    with torch.no_grad():
        for module in model.modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is None:
                continue
            scale, zero_point = compute_dynamic_scales_and_zp(module.weight, scheme.weights, module)
            module.weight_scale.data = scale
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.data = zero_point.to(module.weight_zero_point.dtype)
    ModelCompressor(quantization_config=qc).compress_model(model)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _linears(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A module tree holding an nn.Linear (no bias) at each weight's path."""
    root = torch.nn.Module()
    for name, w in weights.items():
        *path, leaf = name.removesuffix(".weight").split(".")
        parent = root
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        linear.weight.data = w.clone()
        parent.add_module(leaf, linear)
    return root


def decompressed(model) -> dict[str, torch.Tensor]:
    """transformers' weights after compressed-tensors decompressed them (on the first forward)."""
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    return model.state_dict()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("family", FAMILIES)
def test_hf_to_compressed_tensors(checkpoints, tmp_path, family, scheme, texts):
    quant, group, shape = SCHEMES[scheme]
    src = checkpoints(family, shape=shape)
    out = tmp_path / "ct"
    result = api.convert(src, out, to=CT, quant=quant, group_size=group)
    assert not result.fallbacks  # every Linear but the LM head and routers quantized
    qconfig = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qconfig["format"] == "pack-quantized" and qconfig["quantization_status"] == "compressed"
    ours = load_file(out / "model.safetensors")
    theirs = library_compressed(src, qconfig)
    packed = [k for k in ours if k.endswith(".weight_packed")]
    assert packed and "lm_head.weight_packed" not in ours
    assert not any(".block_sparse_moe.gate." in k for k in packed)  # the router stays float
    for name, t in ours.items():
        assert t.dtype == theirs[name].dtype and t.shape == theirs[name].shape, name
        assert t.view(torch.uint8 if t.dtype.itemsize == 1 else torch.int16 if t.dtype.itemsize == 2 else
                      torch.int32 if t.dtype.itemsize == 4 else torch.int64).equal(
            theirs[name].view(torch.uint8 if t.dtype.itemsize == 1 else torch.int16 if t.dtype.itemsize == 2 else
                              torch.int32 if t.dtype.itemsize == 4 else torch.int64)), name
    assert set(theirs) - set(ours) <= {"lm_head.weight"}  # tied: stored once, as save_pretrained does
    if family in UNLOADED_BY_TRANSFORMERS_5 and int(transformers.__version__.split(".")[0]) >= 5:
        with pytest.raises(Unsupported, match="finds .* of its weights nowhere in this checkpoint"):
            api.validate(src, out, texts=texts)
    elif quant == "W8A16":  # random tiny weights make 4-bit error large: W4A16 is held to byte identity
        report = api.validate(src, out, texts=texts)
        assert report.passed and report.tier == "q8", report.failed_gates
    else:
        logits = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(torch.tensor([[1, 2, 3]])).logits
        assert torch.isfinite(logits).all()


def test_asymmetric(checkpoints, tmp_path, monkeypatch, texts):
    """--asymmetric: packed zero points, byte for byte the library's (compressed here in blocks of 32 rows, as a
    large weight is); read back as the library decompresses it."""
    from modelport.convert.serving import write
    monkeypatch.setattr(write, "BLOCK_ELEMENTS", 32 * 64)
    src = checkpoints("llama")
    out = tmp_path / "ct"
    api.convert(src, out, to=CT, quant="W4A16", group_size=32, asymmetric=True)
    qconfig = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qconfig["config_groups"]["group_0"]["weights"]["symmetric"] is False
    ours, theirs = load_file(out / "model.safetensors"), library_compressed(src, qconfig)
    zps = [k for k in ours if k.endswith("weight_zero_point")]
    assert zps and all(ours[k].equal(theirs[k]) for k in ours)
    # the float values our reader gives are the library's fake-quantized weights
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    pivot, source = api.load(out), load_file(src / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    w = source[name]
    args = QuantizationConfig.model_validate({k: v for k, v in qconfig.items()
                                              if k in QuantizationConfig.model_fields}).config_groups["group_0"].weights
    scale, zp = compute_dynamic_scales_and_zp(w, args, None)
    expected = fake_quantize(w, scale, zp, args)
    assert torch.from_numpy(pivot.tensors[name].read().reshape(w.shape).copy()).equal(expected)
    back = tmp_path / "back"
    api.convert(out, back, to="safetensors")
    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers loads it and computes with the values our reader gives: validate runs it
        ids = torch.tensor([[1, 2, 3, 4]])
        logits = [AutoModelForCausalLM.from_pretrained(f, dtype=torch.float32)(ids).logits for f in (out, back)]
        assert logits[0].equal(logits[1])
        report = api.validate(back, out, texts=texts)
        assert report.passed and report.overall["kl_mean"] == 0, report.failed_gates
    # transformers 4.57 cannot load it (zero points of the wrong shape, llm-compressor issue 1618): validate says so
    monkeypatch.setattr(serving_codec, "transformers_major", lambda: 4)
    with pytest.raises(Unsupported, match="transformers 4 with compressed-tensors 0.20 cannot load asymmetric"):
        api.validate(back, out, texts=texts)


@pytest.mark.parametrize("gguf_quant,quant", [("Q4_0", "W4A16"), ("Q8_0", "W8A16")])
def test_gguf_blocks_transcoded(checkpoints, tmp_path, gguf_quant, quant, texts):
    src = checkpoints("llama")
    gguf = tmp_path / "q.gguf"
    api.convert(src, gguf, quant=gguf_quant)
    out = tmp_path / "ct"
    pivot = api.load(gguf)  # HF names, Q/K rows unpermuted; values by gguf-py's dequantizers
    result = api.save(pivot, out, to=CT, quant=quant, group_size=32)
    transcoded = {n["name"] for n in result.fallbacks if n["fallback"].startswith(f"transcoded {gguf_quant}")}
    assert len(transcoded) == 14 and len(result.fallbacks) == 14  # 2 blocks x 7 projections, nothing requantized
    weights = decompressed(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32))
    for name in transcoded | {"model.embed_tokens.weight"}:
        ref = pivot.tensors[name]
        expected = dtypes.cast(ref, "F32").read().reshape(ref.shape)
        assert np.array_equal(weights[name].numpy().view(np.uint32), expected.view(np.uint32)), name
    f32 = tmp_path / "f32.gguf"
    api.save(pivot, f32, dtype="f32")
    report = api.validate(out, f32, texts=texts)
    assert report.overall["kl_mean"] <= 1e-5, report.overall


def compressed_tensors_folder(src: Path, out: Path) -> Path:
    """A W8A16 group-32 folder written by compressed-tensors itself (ModelCompressor, then its update_config)."""
    shutil.copytree(src, out)
    (out / "model.safetensors").unlink()
    from modelport.convert.serving import scheme  # the config only: the tensors are the library's
    qconfig = scheme.config_entry(8, 32, True, ["lm_head"])
    tensors = library_compressed(src, qconfig)
    tensors.pop("lm_head.weight", None)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    qc = QuantizationConfig.model_validate({k: v for k, v in qconfig.items() if k in QuantizationConfig.model_fields})
    ModelCompressor(quantization_config=qc).update_config(str(out))
    return out


def gptq_pack(w: np.ndarray, bits: int, group: int, act_order: bool, rng) -> tuple[dict, np.ndarray]:
    """A GPTQ v1 module as AutoGPTQ documents its layout (symmetric, round-to-nearest stands in for GPTQ's
    updates), and the float values its kernels compute: qweight [in*bits/32, out] packed along inputs, qzeros
    [groups, out*bits/32] holding zero - 1, scales [groups, out] f16, g_idx [in]."""
    out, cols = w.shape
    perm = rng.permutation(cols) if act_order else np.arange(cols)
    g_idx = (np.argsort(perm) // group).astype(np.int32)  # act-order: groups of columns in descending-order rank
    n_groups, maxq, pack = cols // group, (1 << bits) - 1, 32 // bits
    scales = np.zeros((n_groups, out), np.float16)
    for g in range(n_groups):
        cols_g = g_idx == g
        scales[g] = (np.abs(w[:, cols_g]).max(1) / (maxq // 2)).astype(np.float16)
    zero = (maxq + 1) // 2
    s = scales[g_idx].astype(np.float32)  # [in, out]
    q = np.clip(np.round(w.T / s) + zero, 0, maxq).astype(np.uint32)  # [in, out]
    qweight = np.zeros((cols // pack, out), np.uint32)
    for i in range(pack):
        qweight |= q[i::pack] << np.uint32(bits * i)
    zeros = np.full((n_groups, out), zero - 1, np.uint32)
    qzeros = np.zeros((n_groups, out // pack), np.uint32)
    for i in range(pack):
        qzeros |= zeros[:, i::pack] << np.uint32(bits * i)
    value = (s * (q.astype(np.float32) - zero)).T.astype(np.float16)
    return {"qweight": qweight.view(np.int32), "qzeros": qzeros.view(np.int32), "scales": scales, "g_idx": g_idx}, \
        value


def gptq_folder(src: Path, out: Path, act_order: bool) -> tuple[Path, dict[str, np.ndarray]]:
    """An 8-bit group-32 GPTQ v1 folder of `src`'s projections, and each module's expected float weight."""
    shutil.copytree(src, out)
    source = load_np(src / "model.safetensors")
    rng, tensors, expected = np.random.default_rng(0), {}, {}
    for name, w in source.items():
        if name.endswith("_proj.weight"):
            module = name.removesuffix(".weight")
            parts, expected[name] = gptq_pack(w, 8, 32, act_order, rng)
            tensors.update({f"{module}.{k}": v for k, v in parts.items()})
        else:
            tensors[name] = w
    save_np(tensors, out / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 8, "group_size": 32, "desc_act": act_order,
                                  "sym": True, "checkpoint_format": "gptq"}
    (out / "config.json").write_text(json.dumps(cfg))
    return out, expected


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_read_back(checkpoints, tmp_path, act_order):
    folder, expected = gptq_folder(checkpoints("llama"), tmp_path / "gptq", act_order)
    pivot = api.load(folder)
    for name, value in expected.items():  # the values the GPTQ kernels compute with
        assert np.array_equal(pivot.tensors[name].read().reshape(value.shape), value), name


@pytest.mark.parametrize("kind", ["compressed-tensors", "gptq-act-order"])
def test_serving_folders_to_gguf_and_onnx(checkpoints, tmp_path, kind, texts):
    src = checkpoints("llama")
    if kind == CT:
        folder = ref = compressed_tensors_folder(src, tmp_path / "ct")
    else:
        folder, _ = gptq_folder(src, tmp_path / "gptq", act_order=True)
        ref = src  # transformers runs GPTQ folders only through gptqmodel's CUDA kernels: the float source instead
    api.convert(folder, tmp_path / "q8.gguf", quant="Q8_0")
    report = api.validate(ref, tmp_path / "q8.gguf", texts=texts)
    assert report.passed and report.tier == "q8", (report.failed_gates, report.overall)
    api.convert(folder, tmp_path / "onnx", to="onnx")
    report = api.validate(ref, tmp_path / "onnx", texts=texts, **Q8_TIER)
    assert report.passed, (report.failed_gates, report.overall)


def test_awq_gemm_read_back(checkpoints, tmp_path):
    """AWQ GEMM (AutoAWQ's layout: qweight [in, out/8] with columns [0,2,4,6,1,3,5,7] in nibbles 0..7, qzeros
    likewise per group, scales [groups, out]) comes back as scale * (q - zero)."""
    src = checkpoints("llama")
    out = tmp_path / "awq"
    shutil.copytree(src, out)
    source = load_np(src / "model.safetensors")
    rng, group, order = np.random.default_rng(1), 32, [0, 2, 4, 6, 1, 3, 5, 7]
    tensors, expected = dict(source), {}
    for name in [n for n in source if n.endswith("_proj.weight")]:
        w, module = source.pop(name), name.removesuffix(".weight")
        del tensors[name]
        cols, rows = w.shape[1], w.shape[0]
        q = rng.integers(0, 16, (cols, rows)).astype(np.uint32)  # [in, out]
        z = rng.integers(0, 16, (cols // group, rows)).astype(np.uint32)
        s = (rng.random((cols // group, rows)) * 0.01).astype(np.float16)

        def pack(v):
            packed = np.zeros((v.shape[0], v.shape[1] // 8), np.uint32)
            for i, col in enumerate(order):
                packed |= v[:, col::8] << np.uint32(4 * i)
            return packed.view(np.int32)

        tensors.update({f"{module}.qweight": pack(q), f"{module}.qzeros": pack(z), f"{module}.scales": s})
        g = np.arange(cols) // group
        expected[name] = (s[g].astype(np.float32) * (q.astype(np.float32) - z[g])).T.astype(np.float16)
    save_np(tensors, out / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group, "version": "gemm",
                                  "zero_point": True}
    (out / "config.json").write_text(json.dumps(cfg))
    pivot = api.load(out)
    for name, value in expected.items():
        assert np.array_equal(pivot.tensors[name].read().reshape(value.shape), value), name


def test_fp8_float_quantized_read_back(checkpoints, tmp_path):
    """A float-quantized FP8 (e4m3, per-tensor scale) folder written by compressed-tensors comes back as the values
    its fake quantization gives (what FP8 kernels compute with)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    src, out = checkpoints("llama"), tmp_path / "fp8"
    shutil.copytree(src, out)
    args = QuantizationArgs(num_bits=8, type="float", strategy="tensor", symmetric=True, dynamic=False)
    qc = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args,
                                                                         format="float-quantized")},
                            ignore=["lm_head"], format="float-quantized")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    apply_quantization_config(model, qc)
    expected = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if getattr(module, "quantization_scheme", None) is not None:
                scale, zero_point = compute_dynamic_scales_and_zp(module.weight, args, module)
                module.weight_scale.data = scale
                expected[f"{name}.weight"] = fake_quantize(module.weight, scale, zero_point, args)
    ModelCompressor(quantization_config=qc).compress_model(model)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert tensors["model.layers.0.mlp.up_proj.weight"].dtype == torch.float8_e4m3fn
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    ModelCompressor(quantization_config=qc).update_config(str(out))
    pivot = api.load(out)
    assert len(expected) == 14
    for name, value in expected.items():
        assert torch.from_numpy(pivot.tensors[name].read().reshape(value.shape).copy()).equal(value), name


def _config(folder: Path, edit) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg["quantization_config"])
    (folder / "config.json").write_text(json.dumps(cfg))


def _drop(folder: Path, suffix: str) -> None:
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.endswith(suffix)}, folder / "model.safetensors",
              metadata={"format": "pt"})


def _weights(q: dict) -> dict:
    return q["config_groups"]["group_0"]["weights"]


BAD = {  # what is wrong -> (edit, exit code, words the message has)
    "bits": (lambda f: _config(f, lambda q: _weights(q).update(num_bits=4)), 2, "num_bits"),
    "group size": (lambda f: _config(f, lambda q: _weights(q).update(group_size=64)), 2, "group size 64"),
    "missing scales": (lambda f: _drop(f, "layers.1.mlp.up_proj.weight_scale"), 2, "weight_scale missing"),
    "missing zero points": (lambda f: _config(f, lambda q: _weights(q).update(symmetric=False)), 2,
                            "weight_zero_point missing"),
    "unknown format": (lambda f: _config(f, lambda q: (q.update(format="marlin-24"),
                                                        q["config_groups"]["group_0"].update(format="marlin-24"))),
                       3, "marlin-24"),
    "unknown method": (lambda f: _config(f, lambda q: q.update(quant_method="bitsandbytes")), 3, "bitsandbytes"),
}


@pytest.fixture(scope="module")
def good_folder(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "ct"
    api.convert(checkpoints("llama"), out, to=CT, quant="W8A16", group_size=32)
    return out


@pytest.mark.parametrize("what", BAD)
def test_bad_quantization_config(good_folder, tmp_path, what):
    edit, code, words = BAD[what]
    bad = tmp_path / "bad"
    shutil.copytree(good_folder, bad)
    edit(bad)
    dst = tmp_path / "out.gguf"
    result = CliRunner().invoke(cli, ["convert", str(bad), str(dst)])
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"modelport: {bad}") and words in lines[0], lines
    assert not dst.exists() and not list(tmp_path.glob("out.gguf.partial*"))
