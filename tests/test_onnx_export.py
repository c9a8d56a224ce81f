"""HF -> ONNX through our graph builder, checked in onnxruntime (CPU EP) and onnxruntime-genai against transformers:
fp32 logits within 1e-4 for a whole prompt and step by step through the KV cache, fp16 within mean KL 1e-4, in both
operator sets; genai's greedy tokens equal transformers'; deterministic bytes, HF names and bytes kept, a tied
embedding stored once, provenance, refusals."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from modelport import api
from modelport.formats import onnx as onnx_format
from modelport.formats.errors import OutputExists
from modelport.validators.metrics import logit_parity
from modelport.validators.runtimes import OnnxRuntime, Transformers

from support.cli import run_cli
from support.families import BUILT_OPS, FAMILIES

OPS = ("portable", "ort")
STEPS = 24  # tokens decoded one at a time through the KV cache
GENERATE = 16


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """(family, ops, dtype) -> ONNX folder, converted once per module."""
    root, made = tmp_path_factory.mktemp("onnx"), {}

    def get(family: str, ops: str, dtype: str = "f32"):
        key = (family, ops, dtype)
        if key not in made:
            made[key] = root / "-".join(key)
            api.convert(checkpoints(family), made[key], to="onnx", dtype=dtype, ops=ops)
        return made[key]

    return get


@pytest.fixture(scope="module")
def reference(checkpoints, mixed_text):
    """family -> (transformers runtime, ids of the mixed text, its fp32 logits), computed once per family."""
    cache = {}

    def get(family: str):
        if family not in cache:
            ref = Transformers(checkpoints(family))
            ids = ref.tokenize(mixed_text)
            cache[family] = (ref, ids, ref.logits(ids))
        return cache[family]

    return get


@pytest.fixture(scope="module")
def greedy(reference, mixed_text):
    """family -> (prompt ids, transformers' greedy continuation of GENERATE tokens), once per family."""
    cache = {}

    def get(family: str):
        if family not in cache:
            ref, _, _ = reference(family)
            prompt = ref.tokenize(mixed_text.splitlines()[0])
            out = ref.model.generate(ref.torch.tensor([prompt]), max_new_tokens=GENERATE, min_new_tokens=GENERATE,
                                     do_sample=False)
            cache[family] = (prompt, out[0, len(prompt):].tolist())
        return cache[family]

    return get


def _stepwise(onnx: OnnxRuntime, ids: list[int]) -> np.ndarray:
    """Logits of each token fed alone after the cache of the ones before it (present -> past)."""
    past, rows = None, []
    for token in ids:
        logits, past = onnx.forward([token], past)
        rows.append(logits[0])
    return np.stack(rows)


@pytest.mark.parametrize("family,ops", BUILT_OPS)
def test_fp32_logits_match_transformers_whole_and_stepwise(family, ops, exported, reference, mixed_text):
    _, ids, ref = reference(family)
    onnx = OnnxRuntime(exported(family, ops))
    assert onnx.tokenize(mixed_text) == ids, "the folder's tokenizer.json tokenizes differently"
    whole = float(np.abs(ref - onnx.logits(ids)).max())
    steps = float(np.abs(ref[:STEPS] - _stepwise(onnx, ids[:STEPS])).max())
    print(f"{family} {ops} f32: max |logit diff| whole {whole:.3g}, steps {steps:.3g}")
    assert whole <= 1e-4
    assert steps <= 1e-4


@pytest.mark.parametrize("family,ops", BUILT_OPS)
def test_fp16_logits_match_transformers(family, ops, exported, reference):
    _, ids, ref = reference(family)
    onnx = OnnxRuntime(exported(family, ops, "f16"))
    assert onnx.inputs["past_key_values.0.key"].type == "tensor(float16)"
    whole = logit_parity(ref, onnx.logits(ids))
    steps = logit_parity(ref[:STEPS], _stepwise(onnx, ids[:STEPS]))
    print(f"{family} {ops} f16: whole {whole}; steps {steps}")
    assert whole["kl_mean"] <= 1e-4
    assert steps["kl_mean"] <= 1e-4


@pytest.mark.parametrize("family,ops", BUILT_OPS)
def test_onnxruntime_genai_generates_transformers_greedy_tokens(family, ops, exported, greedy):
    og = pytest.importorskip("onnxruntime_genai")
    prompt, want = greedy(family)
    model = og.Model(str(exported(family, ops)))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + GENERATE, min_length=len(prompt) + GENERATE,
                              do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    got = []
    while not generator.is_done():
        generator.generate_next_token()
        got.append(int(generator.get_next_tokens()[0]))
    assert got == want


@pytest.mark.parametrize("family", ["llama", "mistral"])  # tied and untied output
def test_hf_names_and_bytes_kept_tied_embedding_stored_once(family, checkpoints, exported):
    source = api.load(checkpoints(family))
    contents = onnx_format.read(exported(family, "portable"))
    tied = source.config["tie_word_embeddings"]
    want = set(source.tensors) - ({"lm_head.weight"} if tied else set())
    assert set(contents.tensors) == want
    for name in want:
        assert contents.tensors[name].read().tobytes() == source.tensors[name].read().tobytes(), name
    data = contents.path.with_name("model.onnx.data").stat().st_size
    assert data < sum(r.nbytes for r in contents.tensors.values()) + 4096 * len(contents.tensors)
    users = [n.op_type for n in contents.proto.graph.node if "model.embed_tokens.weight" in n.input]
    assert sorted(users) == (["Gather", "Gemm"] if tied else ["Gather"])


def _digests(paths) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths)}


def test_reruns_are_byte_identical_and_record_provenance(checkpoints, tmp_path):
    src = checkpoints("qwen2")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for name in ("a", "b"):
        api.convert(src, tmp_path / name / "folder", to="onnx", dtype="f16", ops="ort")
        api.convert(src, tmp_path / name / "m.onnx", dtype="f16", ops="ort")
    for out in ("folder", "m.onnx", "m.onnx.data"):
        a, b = tmp_path / "a" / out, tmp_path / "b" / out
        assert _digests(a.iterdir() if a.is_dir() else [a]) == _digests(b.iterdir() if b.is_dir() else [b]), out
    assert {"genai_config.json", "tokenizer.json", "config.json", "model.onnx.data"} <= {
        p.name for p in (tmp_path / "a" / "folder").iterdir()}

    meta = onnx_format.read(tmp_path / "a" / "m.onnx").metadata
    sha = hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    assert meta["modelport.source.sha256"] == f"model.safetensors:{sha}"
    assert meta["modelport.version"] == api.VERSION
    assert meta["modelport.arch"] == "qwen2"
    assert meta["modelport.source.format"] == "safetensors"
    assert json.loads(meta["modelport.source.config"]) == json.loads((src / "config.json").read_text())
    assert json.loads(meta["modelport.options"]) == {"dtype": "f16", "ops": "ort"}
    onnx = OnnxRuntime(tmp_path / "b" / "m.onnx")  # the bare file finds its data beside it
    assert np.isfinite(onnx.logits([1, 2, 3])).all()


def test_existing_destination_is_refused_without_force(checkpoints, tmp_path):
    src = checkpoints("llama")
    (tmp_path / "folder").mkdir()
    r = run_cli("convert", src, tmp_path / "folder", "--to", "onnx")
    assert r.returncode == 2 and "exists; pass --force" in r.stderr, r.stderr
    assert list((tmp_path / "folder").iterdir()) == []
    (tmp_path / "m.onnx").write_bytes(b"keep")
    with pytest.raises(OutputExists, match="m.onnx: exists"):
        api.convert(src, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "m.onnx"]
    assert (tmp_path / "m.onnx").read_bytes() == b"keep"
    api.convert(src, tmp_path / "m.onnx", force=True)
    assert (tmp_path / "m.onnx.data").is_file()


def test_quant_implies_the_ort_operator_set_and_portable_refuses_it(checkpoints, tmp_path):
    """--quant int4 alone takes the one operator set that holds MatMulNBits, and says so; asked for with the
    portable set, it is refused (exit 3) naming the set it needs."""
    r = run_cli("convert", checkpoints("llama"), tmp_path / "q", "--to", "onnx", "--quant", "int4")
    assert r.returncode == 0 and "--quant int4 implies --ops ort" in r.stderr, r.stderr
    assert "MatMulNBits" in {n.op_type for n in onnx_format.read(tmp_path / "q").proto.graph.node}
    r = run_cli("convert", checkpoints("llama"), tmp_path / "p", "--to", "onnx", "--quant", "int4", "--ops", "portable")
    assert r.returncode == 3 and "--ops ort" in r.stderr, r.stderr
    assert not (tmp_path / "p").exists()


def test_options_a_format_does_not_take_are_refused_naming_its_own(checkpoints, tmp_path):
    r = run_cli("convert", checkpoints("llama"), tmp_path / "m.gguf", "--ops", "ort")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--ops: gguf output takes no such option (its options: --dtype, --quant, --imatrix)" in r.stderr, r.stderr
    assert not (tmp_path / "m.gguf").exists()
    (tmp_path / "m.dat").write_bytes(b"")
    r = run_cli("convert", checkpoints("llama"), tmp_path / "m", "--to", "onnx", "--imatrix", tmp_path / "m.dat")
    assert r.returncode == 2 and "--imatrix: onnx output takes no such option" in r.stderr, r.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("quant,max_kl", [("int8", 5e-3), ("int4", None)])
def test_quantized_weights_are_matmulnbits_with_hf_names(quant, max_kl, checkpoints, reference, tmp_path):
    src, dst = checkpoints("mistral"), tmp_path / "q"
    api.convert(src, dst, to="onnx", ops="ort", quant=quant, block_size=64)
    contents = onnx_format.read(dst)
    nodes = [n for n in contents.proto.graph.node if n.op_type == "MatMulNBits"]
    linear = [n[:-len(".weight")] for n in api.load(src).tensors if n.endswith("proj.weight") or n == "lm_head.weight"]
    assert sorted(n.input[1][:-len(".weight.qweight")] for n in nodes) == sorted(linear)
    for n in nodes:
        attrs = {a.name: a.i for a in n.attribute}
        assert attrs["bits"] == int(quant[3:]) and attrs["block_size"] == 64
        assert contents.tensors[n.input[1]].shape == (attrs["N"], attrs["K"] // 64, 64 * attrs["bits"] // 8)
    _, ids, ref = reference("mistral")
    parity = logit_parity(ref, OnnxRuntime(dst).logits(ids))
    print(f"mistral {quant}: {parity}")
    if max_kl is not None:
        assert parity["kl_mean"] <= max_kl


def test_gguf_source_converts_like_its_safetensors(checkpoints, reference, tmp_path):
    api.convert(checkpoints("llama"), tmp_path / "m.gguf", dtype="f32")
    api.convert(tmp_path / "m.gguf", tmp_path / "o", to="onnx", ops="ort")
    _, ids, ref = reference("llama")
    assert logit_parity(ref, OnnxRuntime(tmp_path / "o").logits(ids))["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("ops", OPS)
def test_bf16_weights_are_kept_and_computed_in_fp32(ops, checkpoints, tmp_path):
    src = checkpoints("qwen3", "bfloat16")
    api.convert(src, tmp_path / "o", to="onnx", ops=ops)
    contents = onnx_format.read(tmp_path / "o")
    source = api.load(src)
    assert {r.dtype for r in contents.tensors.values()} == {"BF16"}
    for name, ref in contents.tensors.items():
        assert ref.stored.read() == source.tensors[name].stored.read(), name
    ref = Transformers(src)  # upcasts the bf16 weights to fp32: the same numbers the graph computes with
    ids = ref.tokenize("def f(x):\n    return x * 2  # 日本語")
    onnx = OnnxRuntime(tmp_path / "o")
    assert onnx.inputs["past_key_values.0.key"].type == "tensor(float)"
    assert np.abs(ref.logits(ids) - onnx.logits(ids)).max() <= 1e-4


def test_sliding_window_attention_matches_transformers(checkpoints, tmp_path):
    """Mistral's sliding window (every layer), here 5 tokens so that a short prompt crosses it."""
    src = tmp_path / "mistral-window"
    shutil.copytree(checkpoints("mistral"), src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "sliding_window": 5}))
    ref = Transformers(src)
    ids = ref.tokenize("The quick brown fox jumps over the lazy dog and runs far away")
    logits = ref.logits(ids)
    assert np.abs(logits - Transformers(checkpoints("mistral")).logits(ids)).max() > 1.0, "the window must matter"
    for ops in OPS:
        api.convert(src, tmp_path / ops, to="onnx", ops=ops)
        onnx = OnnxRuntime(tmp_path / ops)
        assert np.abs(logits - onnx.logits(ids)).max() <= 1e-4, ops
        assert np.abs(logits - _stepwise(onnx, ids)).max() <= 1e-4, ops


def _variant(checkpoints, tmp_path, family: str, shape: str = "tiny", **config) -> Path:
    """A copy of the tiny `family` checkpoint whose config.json says `config` besides."""
    src = tmp_path / f"{family}-variant"
    shutil.copytree(checkpoints(family, shape=shape), src)
    (src / "config.json").write_text(json.dumps({**json.loads((src / "config.json").read_text()), **config}))
    return src


def _transformers_stepwise(ref: Transformers, ids: list[int]) -> np.ndarray:
    """transformers' logits of each token fed alone after its own cache of the ones before it."""
    torch = ref.torch
    past, rows = None, []
    with torch.no_grad():
        for i, token in enumerate(ids):
            out = ref.model(torch.tensor([[token]]), past_key_values=past, use_cache=True,
                            position_ids=torch.tensor([[i]]))
            past, rows = out.past_key_values, rows + [out.logits[0, -1].float().numpy()]
    return np.stack(rows)


def test_longrope_switches_to_the_long_factors_inside_the_graph(checkpoints, tmp_path, mixed_text):
    """phi3's LongRoPE with original_max_position_embeddings 64, over 100 tokens: the whole prompt rotates with the
    long factors; token by token, transformers switches once the sequence passes 64 (the keys cached before keep the
    short ones), and so does the graph, by the total sequence length."""
    src = _variant(checkpoints, tmp_path, "phi3", original_max_position_embeddings=64)
    ref = Transformers(src)
    ids = ref.tokenize(mixed_text)[:100]
    whole, steps = ref.logits(ids), _transformers_stepwise(ref, ids)
    assert np.abs(whole - steps).max() > 1.0, "the switch must matter"
    for ops in OPS:
        api.convert(src, tmp_path / ops, to="onnx", ops=ops)
        onnx = OnnxRuntime(tmp_path / ops)
        got_whole, got_steps = (float(np.abs(want - got).max()) for want, got in
                                ((whole, onnx.logits(ids)), (steps, _stepwise(onnx, ids))))
        print(f"phi3 LongRoPE switch at 64, {ops}: max |logit diff| whole {got_whole:.3g}, steps {got_steps:.3g}")
        assert got_whole <= 1e-4 and got_steps <= 1e-4, ops


def test_partial_rotary_and_what_ort_refuses(checkpoints, tmp_path, mixed_text):
    """partial_rotary_factor 0.5 (Phi-4-mini rotates 0.75): head_dim 32 rotates 16 dimensions in both operator sets;
    head_dim 16 would rotate 8, which GroupQueryAttention cannot (multiples of 16): --ops ort is refused (exit 3)."""
    factors = {"short_factor": list(np.linspace(1.0, 2.0, 8)), "long_factor": list(np.linspace(1.0, 30.0, 8))}
    src = _variant(checkpoints, tmp_path, "phi3", "g128", partial_rotary_factor=0.5,
                   rope_scaling={"type": "longrope", **factors})
    ref = Transformers(src)
    ids = ref.tokenize(mixed_text)[:48]
    logits = ref.logits(ids)
    for ops in OPS:
        api.convert(src, tmp_path / ops, to="onnx", ops=ops)
        assert np.abs(logits - OnnxRuntime(tmp_path / ops).logits(ids)).max() <= 1e-4, ops
    narrow = _variant(checkpoints, tmp_path / "narrow", "phi3", partial_rotary_factor=0.5,
                      rope_scaling={"type": "longrope", **{k: v[:4] for k, v in factors.items()}})
    r = run_cli("convert", narrow, tmp_path / "refused", "--to", "onnx", "--ops", "ort")
    assert r.returncode == 3 and "--ops portable" in r.stderr, r.stderr
    assert not (tmp_path / "refused").exists()


def test_alibi_is_refused_with_ort_naming_the_sets_that_compute_it(checkpoints, tmp_path):
    """mpt's ALiBi: the builder's GroupQueryAttention adds no bias, so --ops ort is one line, exit 3, nothing
    written, naming --ops portable and qdq (which tests above check against transformers)."""
    r = run_cli("convert", checkpoints("mpt"), tmp_path / "refused", "--to", "onnx", "--ops", "ort")
    assert r.returncode == 3 and "--ops portable" in r.stderr and "--ops qdq" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()


def test_activation_is_read_from_the_config(checkpoints, tmp_path):
    """gemma with hidden_act "gelu" (erf) instead of its sample's gelu_pytorch_tanh: the builder spells out the one
    the config names."""
    src = tmp_path / "gemma-gelu"
    shutil.copytree(checkpoints("gemma"), src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    ref = Transformers(src)
    ids = ref.tokenize("The quick brown fox jumps over the lazy dog and runs far away")
    logits = ref.logits(ids)
    assert np.abs(logits - Transformers(checkpoints("gemma")).logits(ids)).max() > 1e-3, "the activation must matter"
    for ops in OPS:
        api.convert(src, tmp_path / ops, to="onnx", ops=ops)
        assert np.abs(logits - OnnxRuntime(tmp_path / ops).logits(ids)).max() <= 1e-4, ops


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "qwen2_moe"])
def test_portable_graph_is_standard_onnx(family, exported):
    """Only default-domain operators that onnx itself knows: its full checker (with strict shape inference) passes;
    the ort set uses the contrib operators instead."""
    onnx = pytest.importorskip("onnx")
    path = exported(family, "portable", "f16") / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    ort_ops = {n.op_type for n in onnx_format.read(exported(family, "ort", "f16")).proto.graph.node}
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization"} <= ort_ops
    assert ("MoE" in ort_ops) == (family == "qwen2_moe")
