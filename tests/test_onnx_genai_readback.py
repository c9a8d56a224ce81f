"""Reading back ONNX folders written by onnxruntime-genai's model builder (issue 13): no config.json beside them, so
config.json is rebuilt from genai_config.json and the graph; fp32 exports (llama, mistral, qwen2, qwen3, phi3 with
and without LongRoPE, gemma, gemma2, granite: their scalars from attention attributes and graph constants) give every
original HF tensor back bit for bit and transformers computes the original's logits from the result; fp16/bf16
exports give the original cast, int4 ones the weights onnxruntime computes with. What the rebuilt config cannot say
is refused, never guessed: a rope its caches do not tell (one bit off, linear scaling, partial rotation), attention
scaled or capped otherwise than the family's config can say, another family, a weight the walk misses, a malformed
genai_config.json; a pad token the builder may have invented is left out."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open

from support.cli import run_cli
from modelport import api
from modelport.convert import provenance
from modelport.convert.onnx import genai_config
from modelport.convert.onnx import reader as onnx_reader
from modelport.formats.errors import ModelportError, Unsupported
from modelport.formats.model import MemorySlice
from modelport.validators.runtimes import Transformers

pytest.importorskip("onnxruntime_genai.models.builder")

# the builder's exports these tests read: name -> (sample, config.json fields changed before exporting). "llama" is
# the llama sample (Llama 3.2's llama3 rope scaling); "phi3" is Phi-3-mini-4k's layout (no LongRoPE, a 2047-token
# window), "phi3-longrope" the phi3 sample's Phi-3-mini-128k one (LongRoPE: two cache pairs the graph picks between);
# "mistral-window" has a sliding window shorter than the test text, "qwen2-window" one on its second layer only.
PHI3_4K = {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "rope_scaling": None,
           "max_position_embeddings": 4096, "sliding_window": 2047}
VARIANTS = {"llama": ("llama", {}), "mistral": ("mistral", {}),
            "mistral-window": ("mistral", {"sliding_window": 32}), "qwen2": ("qwen2", {}), "qwen3": ("qwen3", {}),
            "qwen2-window": ("qwen2", {"use_sliding_window": True, "sliding_window": 32, "max_window_layers": 1,
                                       "layer_types": None}),
            "gemma": ("gemma", {}), "gemma2": ("gemma2", {}), "granite": ("granite", {}),
            "phi3": ("phi3", PHI3_4K), "phi3-longrope": ("phi3", {})}
INT4 = ("llama", "qwen3")  # a tied int4 embedding (GatherBlockQuantized); a packed projection split for q/k norms
# fp16 for CPU: MultiHeadAttention with q, k, v apart and RotaryEmbedding nodes; fp16 for CUDA (built without a GPU):
# GroupQueryAttention computing qwen3's per-head norms itself
HALF = [("llama", "fp16"), ("llama", "bf16"), ("qwen3", "fp16-cuda")]
EXPORTS = [(name, "fp32") for name in VARIANTS] + [(name, "int4") for name in INT4] + HALF
# all read back bit for bit in fp32; gemma's norms come back as (1 + w) - 1, which is w to within half an ulp of
# 1 + w (the builder folds gemma's offset into its norms)
NORM_ATOL = {"gemma": 2 ** -24, "gemma2": 2 ** -24}
# config.json fields the rebuilt config must give as the original has them (transformers' defaults fill the rest)
KEPT = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps",
        "tie_word_embeddings", "bos_token_id", "eos_token_id", "sliding_window",
        # what the builder keeps in graph constants and attention attributes (gemma2's, granite's)
        "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "attention_multiplier",
        "embedding_multiplier", "residual_multiplier", "logits_scaling")
# rope_scaling's fields, by its rope_type
ROPE_SCALING = {"llama3": ("rope_type", "factor", "low_freq_factor", "high_freq_factor",
                           "original_max_position_embeddings"),
                "longrope": ("rope_type", "short_factor", "long_factor")}
ROPE_TOP = {"llama3": (), "longrope": ("original_max_position_embeddings",)}  # and config.json's own fields
# the builder's command line run once per export in one interpreter, which imports torch and the builder only once
BUILDER = """import runpy, sys
for argv in sys.argv[1].split("\\n"):
    sys.argv = ["builder", *argv.split("\\t")]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
"""


def _variant(src, out, changes):
    """A copy of HF folder `src` with `changes` made to its config.json (a None value drops the field)."""
    shutil.copytree(src, out)
    cfg = json.loads((out / "config.json").read_text()) | changes
    (out / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}, indent=2))
    return out


@pytest.fixture(scope="module")
def genai(checkpoints, tmp_path_factory):
    """(variant, precision) -> (HF folder, the builder's export of it: `python -m onnxruntime_genai.models.builder
    -m HF -o OUT -p PRECISION -e cpu`, or `-e cuda` for a precision ending -cuda), all exported on first use."""
    made, jobs = {}, []
    for name, precision in EXPORTS:
        root = tmp_path_factory.mktemp(f"genai-{name}-{precision}")
        sample, changes = VARIANTS[name]
        src = _variant(checkpoints(sample), root / "hf", changes) if changes else checkpoints(sample)
        made[name, precision] = src, root / "onnx"
        dtype, _, ep = precision.partition("-")
        jobs.append(["-m", str(src), "-o", str(root / "onnx"), "-p", dtype, "-e", ep or "cpu", "-c", str(root / "c")])
    r = subprocess.run([sys.executable, "-c", BUILDER, "\n".join("\t".join(job) for job in jobs)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    def get(name, precision="fp32"):
        return made[name, precision]

    return get


def _config(folder):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


def _tensors(folder):
    with safe_open(folder / "model.safetensors", "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("name", VARIANTS)
def test_fp32_export_gives_the_original_tensors_and_config(genai, name, tmp_path):
    src, onnx_dir = genai(name)
    assert not (onnx_dir / "config.json").exists(), "the builder wrote config.json: nothing would be rebuilt"
    out = tmp_path / "hf"
    api.convert(onnx_dir, out, to="safetensors")
    (original, _), (back, meta) = _tensors(src), _tensors(out)
    assert sorted(back) == sorted(original)
    for tensor, arr in original.items():
        atol = NORM_ATOL.get(name, 0.0) if arr.ndim == 1 and "norm" in tensor else 0.0
        assert back[tensor].dtype == arr.dtype, tensor
        same = back[tensor].tobytes() == arr.tobytes() if not atol else \
            np.allclose(back[tensor], arr, rtol=0, atol=atol)
        assert same, tensor
    want, got = json.loads((src / "config.json").read_text()), json.loads((out / "config.json").read_text())
    assert {k: got.get(k) for k in KEPT if k in want} == {k: want[k] for k in KEPT if k in want}
    # which layers are local, as transformers fills it in where config.json leaves it out (qwen2's from its flags)
    assert getattr(_config(out), "layer_types", None) == getattr(_config(src), "layer_types", None)
    rope = want.get("rope_parameters") or want.get("rope_scaling") or {}
    assert got["rope_theta"] == rope.get("rope_theta", want.get("rope_theta"))
    if rope.get("rope_type", "default") != "default":
        keys = ROPE_SCALING[rope["rope_type"]]
        assert {k: got["rope_scaling"][k] for k in keys} == {k: rope[k] for k in keys}
        assert {k: got[k] for k in ROPE_TOP[rope["rope_type"]]} == {k: want[k] for k in ROPE_TOP[rope["rope_type"]]}
    assert meta[provenance.CONFIG_REBUILT] == "genai_config.json"


@pytest.mark.parametrize("name", ("llama", "mistral-window", "qwen2-window", "gemma2", "granite",
                                  "phi3-longrope"))
def test_fp32_export_read_back_computes_the_original_logits(genai, mixed_text, name, tmp_path):
    src, onnx_dir = genai(name)
    out = tmp_path / "hf"
    api.convert(onnx_dir, out, to="safetensors")
    ref, back = Transformers(src), Transformers(out)
    ids = ref.tokenize(mixed_text)
    assert back.tokenize(mixed_text) == ids
    assert np.array_equal(back.logits(ids), ref.logits(ids))


def test_longrope_read_back_computes_the_original_logits_past_the_original_context(genai, tmp_path):
    """Past original_max_position_embeddings transformers rotates with the long factors: 4200 tokens (the sample's
    original context is 4096) give the original's logits exactly from the read-back too."""
    src, onnx_dir = genai("phi3-longrope")
    api.convert(onnx_dir, tmp_path / "hf", to="safetensors")
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 32000, 4200)]
    assert json.loads((src / "config.json").read_text())["original_max_position_embeddings"] < len(ids)
    assert np.array_equal(Transformers(tmp_path / "hf").logits(ids), Transformers(src).logits(ids))


@pytest.mark.parametrize("name", INT4)
def test_int4_export_gives_the_weights_onnxruntime_computes_with(genai, name, tmp_path):
    """MatMulNBits and the tied GatherBlockQuantized table dequantize onto the int4 grid within one step of the
    original; norms and the rebuilt config are as in fp32."""
    src, onnx_dir = genai(name, "int4")
    out = tmp_path / "hf"
    api.convert(onnx_dir, out, to="safetensors")
    api.convert(genai(name)[1], tmp_path / "fp32", to="safetensors")
    (original, _), (back, _) = _tensors(src), _tensors(out)
    assert sorted(back) == sorted(original)
    for tensor, arr in original.items():
        if arr.ndim == 1:
            assert back[tensor].tobytes() == arr.tobytes(), tensor
            continue
        blocks = arr.reshape(arr.shape[0], -1, 32)
        step = np.abs(blocks).max(-1, keepdims=True) / 8  # symmetric int4: scale = block absmax / 8
        assert (np.abs(back[tensor].reshape(blocks.shape) - blocks) <= step * (1 + 1e-6)).all(), tensor
    assert (out / "config.json").read_text() == (tmp_path / "fp32" / "config.json").read_text()


@pytest.mark.parametrize("name,precision", HALF)
def test_half_export_gives_the_original_tensors_cast(genai, name, precision, tmp_path):
    """The builder casts the weights and its caches: the weights come back as the original's cast, the rope from
    caches compared in their own type."""
    import torch
    from safetensors.torch import load_file

    src, onnx_dir = genai(name, precision)
    api.convert(onnx_dir, tmp_path / "hf", to="safetensors")
    original, back = load_file(src / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision.partition("-")[0]]
    assert sorted(back) == sorted(original)
    for tensor, t in original.items():
        assert back[tensor].dtype == dtype and torch.equal(back[tensor], t.to(dtype)), tensor
    cfg = json.loads((src / "config.json").read_text())
    want = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["rope_theta"] == want


def test_a_weight_the_walk_misses_is_refused(genai, monkeypatch):
    """Were the walk blind to where a builder puts a weight (here GroupQueryAttention's own q/k norm scales), the
    export is refused rather than read back without it."""
    monkeypatch.setattr(onnx_reader, "FUSED_QK_NORMS", {})
    with pytest.raises(Unsupported, match="no model.layers.0.self_attn.k_norm.weight found"):
        api.load(genai("qwen3", "fp16-cuda")[1])


@pytest.mark.parametrize("branch,problem", [("then_branch", "no factor of frequency 3"),
                                            ("else_branch", "no factor of frequency 3")])
def test_longrope_cache_one_bit_off_is_refused(genai, tmp_path, branch, problem):
    """LongRoPE's factors are read column by column from the two cache pairs the graph picks between (the long one
    past original_max_position_embeddings): one bit off in either pair, and no factor gives that column: refused
    (exit 3), one line, no output."""
    import onnx

    onnx_dir = shutil.copytree(genai("phi3-longrope")[1], tmp_path / "bad")
    model = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    picked = next(n for n in model.graph.node if n.op_type == "If")
    cos = next(a.g for a in picked.attribute if a.name == branch).node[0].attribute[0].t
    raw = bytearray(cos.raw_data)
    raw[3 * 4 + 8 * 4 * 1000] ^= 1  # frequency 3 at position 1000 (8 frequencies a row of float32)
    cos.raw_data = bytes(raw)
    onnx.save(model, str(onnx_dir / "model.onnx"))
    with pytest.raises(Unsupported, match=problem):
        api.load(onnx_dir)
    r = run_cli("convert", onnx_dir, tmp_path / "hf", "--to", "safetensors")
    assert r.returncode == 3 and "rope could not be recovered" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "hf").exists()


def test_gemma3_is_not_exported_by_this_builder(checkpoints, tmp_path):
    """No gemma3 export to read back: onnxruntime-genai 0.18's Gemma3Model reads config.rope_parameters["rope_type"],
    but transformers 5 keeps gemma3's rope parameters per layer type ({"full_attention": ..., "sliding_attention":
    ...}, whatever config.json says; the builder's Gemma4Model reads them so, its Gemma3Model does not), and the
    builder needs transformers 5. An upstream limitation: when this fails, the builder exports gemma3 and its two
    cache pairs (global and local rope bases) can be read back."""
    r = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(checkpoints("gemma3")),
                        "-o", str(tmp_path / "onnx"), "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "c")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "KeyError: 'rope_type'" in r.stderr, r.stderr[-2000:]


def test_an_invented_pad_token_is_left_out(genai, tmp_path):
    """The builder writes the first eos_token_id as pad_token_id where neither config.json nor the tokenizer names
    one (gemma2's sample): that value is not written back; a tokenizer's own pad token (Llama 3's, granite's) is."""
    for name, pad in (("gemma2", None), ("granite", 128004)):
        genai_json = json.loads((genai(name)[1] / "genai_config.json").read_text())
        assert genai_json["model"]["pad_token_id"] == (pad or genai_json["model"]["eos_token_id"])
        assert api.load(genai(name)[1]).config.get("pad_token_id") == pad


@pytest.mark.parametrize("name", ("qwen2", "gemma2", "granite"))
def test_inspect_reads_the_export_back(genai, name):
    _, onnx_dir = genai(name)
    r = run_cli("inspect", onnx_dir, "--json")
    assert r.returncode == 0, r.stderr
    view = json.loads(r.stdout)
    assert view["arch"] == name and "read_back" not in view.get("metadata", {}), view.get("metadata")


def _edited(onnx_dir, out, edit):
    """A copy of a builder folder whose genai_config.json text `edit` rewrites."""
    shutil.copytree(onnx_dir, out)
    (out / "genai_config.json").write_text(edit((out / "genai_config.json").read_text()))
    return out


def _set(path, value):
    def edit(text):
        data = json.loads(text)
        *outer, last = path
        inner = data
        for key in outer:
            inner = inner[key]
        if value is None:
            del inner[last]
        else:
            inner[last] = value
        return json.dumps(data)
    return edit


@pytest.mark.parametrize("edit,code,problem", [
    (_set(("model", "type"), "nonesuch"), 3, "onnxruntime-genai model type 'nonesuch'"),
    (_set(("model", "type"), "starcoder2"), 3,
     "rebuilds the config.json of gemma, gemma2, granite, llama, mistral, phi3, qwen2, qwen3"),
    (_set(("model", "decoder", "hidden_size"), None), 2, "genai_config.json has no 'hidden_size'"),
    (_set(("model", "decoder"), None), 2, "no \"model\" section with a \"decoder\""),
    (lambda text: text[:40], 2, "genai_config.json"),
], ids=["unknown-type", "unflagged-family", "no-hidden-size", "no-decoder", "truncated"])
def test_bad_genai_config_is_one_line_naming_the_file(genai, tmp_path, edit, code, problem):
    _, onnx_dir = genai("llama")
    bad = _edited(onnx_dir, tmp_path / "bad", edit)
    with pytest.raises(ModelportError) as e:
        api.convert(bad, tmp_path / "hf", to="safetensors")
    assert e.value.exit_code == code and problem in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert e.value.path.endswith("genai_config.json") or e.value.path == str(bad)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("name,attribute,value,layers", [("llama", "scale", 0.3, 2), ("llama", "softcap", 50.0, 2),
                                                        ("gemma2", "softcap", 20.0, 1)])
def test_attention_the_config_cannot_say_is_refused(genai, tmp_path, name, attribute, value, layers):
    """An attention scale other than 1/sqrt(head_dim) or a soft-cap in a llama graph would be a config field llama
    has not (gemma2's query_pre_attn_scalar and soft-cap, granite's attention_multiplier); a soft-cap on one of
    gemma2's layers only is no config either: refused, not dropped."""
    import onnx

    _, onnx_dir = genai(name)
    bad = shutil.copytree(onnx_dir, tmp_path / "bad")
    model = onnx.load(str(bad / "model.onnx"), load_external_data=False)
    for node in [n for n in model.graph.node if n.op_type == "GroupQueryAttention"][:layers]:
        for a in node.attribute:
            if a.name == attribute:
                a.f = value
    onnx.save(model, str(bad / "model.onnx"))
    with pytest.raises(Unsupported, match="config.json could not be rebuilt"):
        api.load(bad)


def _builder_caches(theta, dim, length, scale=1.0):
    """cos and sin caches as onnxruntime-genai's builder computes them (make_rotary_embedding_caches_from_scratch;
    `scale` its linear rope scaling)."""
    import torch

    inv_freq = 1.0 / (scale * (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)))
    freqs = torch.outer(torch.arange(length, dtype=torch.int64).type_as(inv_freq), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return [MemorySlice.tensor(x[:, :dim // 2].contiguous().numpy(), "F32") for x in (emb.cos(), emb.sin())]


@pytest.mark.parametrize("theta", [10000.0, 500000.0, 1000000.0, 75000.0, 999999.4420358813, 10000000.0])
def test_rope_theta_is_the_shortest_decimal_giving_the_caches(theta):
    """Any theta reads back as the shortest decimal whose caches are the stored ones bit for bit (starcoder2's
    999999.4420358813 as the float32 the builder computes with); caches one bit off, or linearly scaled, or rotating
    part of each head, are refused."""
    cos, sin = _builder_caches(theta, 64, 4096)
    found = genai_config.rope(cos, sin, 64, "m")
    assert list(found) == ["rope_theta"] and len(repr(found["rope_theta"])) <= len(repr(theta))
    again = _builder_caches(found["rope_theta"], 64, 4096)
    assert all(a.read().tobytes() == b.read().tobytes() for a, b in zip(again, (cos, sin)))
    bits = cos.read().copy()
    bits.view(np.uint32)[4000, 5] ^= 1  # one bit of one angle, past the rows tried first
    for caches in ((MemorySlice.tensor(bits, "F32"), sin), _builder_caches(theta, 64, 4096, scale=2.0)):
        with pytest.raises(Unsupported, match="rope could not be recovered"):
            genai_config.rope(*caches, 64, "m")
    with pytest.raises(Unsupported, match="partial rotary"):  # Phi-4-mini's 0.75 of each head
        genai_config.rope(*_builder_caches(theta, 48, 16), 64, "m")
