"""ONNX for the families beyond the builder's four (issue 6, acceptance 2): optimum's export where it computes what
transformers computes (fp32 logits within issue 5's max |diff| 1e-4 in onnxruntime's CPU EP, whole prompt and token
by token through the KV cache; bert's hidden states and pooled embeddings), a clean refusal (exit 3, one line) where
it does not export or exports wrongly, the evidence that each "wrongly" is real, and `modelport archs` listing what
the code supports."""
from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from modelport import api
from modelport.convert import archs
from modelport.convert.onnx import optimum as onnx_optimum
from modelport.samples import tiny
from modelport.validators.runtimes import OnnxRuntime, Transformers, TransformersEmbeddings

from support.cli import run_cli
from support.families import FAMILIES as BUILT
from support.families import MORE_FAMILIES

# the samples of the families without a graph builder: optimum's to export or refuse
NOT_BUILT = tuple(name for name in MORE_FAMILIES if not archs.for_hf(tiny.SAMPLES[name].family).onnx.builder)

pytest.importorskip("optimum.exporters.onnx")

PROMPT = 40  # tokens of the mixed text
BOUND = 1e-4  # issue 5's fp32 max |logit diff|
# samples that differ from tiny.SAMPLES' in config.json only: an optimum family with a rope that changes with the
# sequence length, and a LongRoPE switch or a dynamic NTK rope limit near enough for a short test
VARIANTS = {"falcon-dynamic": ("falcon", {"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}),
            "phi3-longrope64": ("phi3", {"original_max_position_embeddings": 64}),
            "gemma-dynamic64": ("gemma", {"rope_scaling": {"rope_type": "dynamic", "factor": 4.0},
                                          "max_position_embeddings": 64})}
# the variants whose export or refusal is tested beside the samples' (phi3-longrope64 and gemma-dynamic64 only show
# optimum's limits: phi3 and gemma have a graph builder, whose rope types are its own)
CHECKED_VARIANTS = ("falcon-dynamic",)


def config_json(name: str) -> dict:
    """The config.json fields sample or variant `name` sets."""
    family, overrides = VARIANTS.get(name, (name, {}))
    return tiny.config(family) | overrides


def refusal(name: str) -> str | None:
    """What modelport's refusal of `name`'s ONNX export names, as its family's ONNX section says; None: optimum
    exports it."""
    config = config_json(name)
    limits = archs.for_hf(config["model_type"]).onnx.optimum
    if limits is None:
        return "optimum-onnx does not export it"
    return next((limit.what for limit in limits if limit.applies(config)), None)


# sample or variant -> its export or its refusal: what the message names
OUTCOMES = {name: refusal(name) for name in (*NOT_BUILT, *CHECKED_VARIANTS)}
EXPORTED = tuple(name for name, why in OUTCOMES.items() if why is None)
REFUSED = {name: why for name, why in OUTCOMES.items() if why is not None}


def test_every_family_is_exported_or_refused():
    """Every family without a graph builder has its optimum export or its refusal tested here (bert, an encoder, by
    test_bert_export_embeds_like_transformers), and every configuration a family's ONNX section refuses is shown
    refused by a sample or a variant."""
    tested = {config_json(name)["model_type"] for name in OUTCOMES}
    encoders = {sample.family for sample in tiny.SAMPLES.values() if sample.auto_class != tiny.CAUSAL_LM}
    assert tested == {name for name, arch in archs.registry().items() if not arch.onnx.builder} - encoders
    limits = {limit.what for arch in archs.registry().values() for limit in arch.onnx.optimum or ()}
    assert limits <= set(REFUSED.values()), limits - set(REFUSED.values())


@pytest.fixture(scope="module")
def sample(checkpoints, tmp_path_factory):
    """name (a tiny.SAMPLES name or a VARIANTS key) -> HF folder."""
    made = {}

    def get(name: str):
        if name not in VARIANTS:
            return checkpoints(name)
        if name not in made:
            family, overrides = VARIANTS[name]
            made[name] = tmp_path_factory.mktemp("variant") / name
            shutil.copytree(checkpoints(family), made[name])
            config = json.loads((made[name] / "config.json").read_text()) | overrides
            (made[name] / "config.json").write_text(json.dumps(config, indent=2))
        return made[name]

    return get


@pytest.mark.parametrize("name", EXPORTED)
def test_optimum_export_runs_like_transformers(name, sample, mixed_text, tmp_path):
    src = sample(name)
    result = api.convert(src, tmp_path / "onnx", to="onnx")
    assert any("optimum" in f["fallback"] for f in result.fallbacks), result.fallbacks
    ref = Transformers(src)
    ids = ref.tokenize(mixed_text)[:PROMPT]
    onnx = OnnxRuntime(tmp_path / "onnx")
    assert onnx.tokenize(mixed_text)[:PROMPT] == ids, "the folder's tokenizer.json tokenizes differently"
    want = ref.logits(ids)
    whole = float(np.abs(want - onnx.logits(ids)).max())
    steps = float(np.abs(want - _stepwise(onnx, ids)).max())
    print(f"{name} via optimum, {len(ids)} tokens: onnxruntime vs transformers fp32 max |diff| {whole:.2e} "
          f"(whole prompt), {steps:.2e} (token by token through the KV cache)")
    assert whole <= BOUND and steps <= BOUND


def _stepwise(onnx: OnnxRuntime, ids: list[int]) -> np.ndarray:
    """Logits of each position, fed one token at a time with the cache the model returns."""
    past, rows = None, []
    for token in ids:
        logits, past = onnx.forward([token], past)
        rows.append(logits[-1])
    return np.stack(rows)


def test_gguf_source_exports_through_optimum(checkpoints, mixed_text, tmp_path):
    """A GGUF of a family optimum exports goes the same way (an HF folder written from it first)."""
    name = EXPORTED[0]
    src = checkpoints(name)
    api.convert(src, tmp_path / "m.gguf", dtype="f32")
    api.convert(tmp_path / "m.gguf", tmp_path / "onnx", to="onnx")
    ref = Transformers(src)
    ids = ref.tokenize(mixed_text)[:PROMPT]
    onnx = OnnxRuntime(tmp_path / "onnx")
    assert onnx.tokenize(mixed_text)[:PROMPT] == ids
    diff = float(np.abs(ref.logits(ids) - onnx.logits(ids)).max())
    print(f"{name} GGUF f32 via optimum: onnxruntime vs transformers on the source, max |diff| {diff:.2e}")
    assert diff <= BOUND
    assert not list(tmp_path.glob(".modelport-hf-*"))


def test_bert_export_embeds_like_transformers(checkpoints, mixed_text, tmp_path):
    import onnxruntime as ort

    src = checkpoints("bert")
    api.convert(src, tmp_path / "onnx", to="onnx")
    ref = TransformersEmbeddings(src)
    texts = [ref.tokenizer.decode(ref.tokenize(mixed_text)[1:PROMPT - 1]), "a short one"]
    batch = ref.tokenizer(texts, padding=True, return_tensors="pt")
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    states = session.run(["last_hidden_state"], {i.name: batch[i.name].numpy() for i in session.get_inputs()})[0]
    with ref.torch.no_grad():
        want = ref.model(**batch).last_hidden_state.numpy()
    mask = batch.attention_mask.numpy().astype(bool)
    diff = float(np.abs(states - want)[mask].max())
    pooled = ref.POOLERS[ref.mode](ref.torch.from_numpy(states), batch.attention_mask.float())
    if ref.normalize:
        pooled = ref.torch.nn.functional.normalize(pooled, dim=1)
    got, expected = pooled.numpy(), ref.embed(texts)
    cosine = float(min(np.dot(g, e) / np.linalg.norm(g) / np.linalg.norm(e) for g, e in zip(got, expected)))
    print(f"bert via optimum: last_hidden_state max |diff| {diff:.2e}; {ref.mode} pooled cosine {cosine:.7f}, "
          f"max |diff| {np.abs(got - expected).max():.2e}")
    assert diff <= BOUND and cosine >= 0.9999 and np.abs(got - expected).max() <= BOUND


@pytest.mark.parametrize("name", REFUSED)
def test_refused_export_is_one_line_exit_3_and_writes_nothing(name, sample, tmp_path):
    r = run_cli("convert", sample(name), tmp_path / "onnx", "--to", "onnx")
    message = r.stderr.strip()
    assert r.returncode == 3, r.stderr
    assert "\n" not in message and "Traceback" not in message, message
    arch = archs.for_hf(json.loads((sample(name) / "config.json").read_text())["model_type"]).name
    assert f"no ONNX export for {arch!r}" in message and REFUSED[name] in message, message
    assert not list(tmp_path.iterdir())


def _optimum_logits(src, out, ids):
    """optimum's own export of `src` (what modelport refuses to write), run in onnxruntime."""
    from optimum.exporters.onnx import main_export

    with contextlib.redirect_stdout(io.StringIO()), onnx_optimum.quiet():
        main_export(str(src), output=str(out), task="text-generation-with-past", device="cpu", do_validation=False)
    return OnnxRuntime(out).logits(ids)


@pytest.mark.parametrize("name", ["phi3-longrope64", "gemma-dynamic64"])
def test_refused_configs_are_wrong_in_optimums_export(name, sample, mixed_text, tmp_path):
    """The refusals are optimum's limits, not modelport's caution: its export computes something else over 96
    tokens (past the rope switches at 64)."""
    ref = Transformers(sample(name))
    ids = ref.tokenize(mixed_text)[:96]
    got = _optimum_logits(sample(name), tmp_path / "o", ids)
    diff = float(np.abs(ref.logits(ids) - got).max())
    print(f"{name}: optimum's export vs transformers, max |diff| {diff:.2e}")
    assert diff > BOUND


def test_falcon_new_decoder_fails_in_optimums_trace(sample, tmp_path):
    """Falcon 40B's layout: optimum's dummy cache has num_kv_heads heads, transformers' has num_attention_heads."""
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        _optimum_logits(sample("falcon40b"), tmp_path / "o", [1, 2, 3])


# --- modelport archs


@pytest.fixture(scope="module")
def listing():
    r = run_cli("archs", "--json")
    assert r.returncode == 0, r.stderr
    return {row["name"]: row for row in json.loads(r.stdout)}


def test_archs_lists_every_family_with_its_onnx_path(listing):
    assert set(listing) == set(archs.registry())
    for name, row in listing.items():
        gguf, onnx = row["formats"]["gguf"], row["formats"]["onnx"]
        assert {"safetensors->gguf", "gguf->safetensors"} <= set(row["paths"]) and "Q4_K_M" in gguf["quant"]
        onnx_of = archs.registry()[name].onnx
        expected = "builder" if onnx_of.builder else "optimum" if onnx_of.optimum is not None else None
        assert onnx["via"] == expected and onnx["write"] == (expected is not None), row
        assert ("int4" in onnx["quant"]) == (expected == "builder"), row
    assert listing["falcon"]["formats"]["onnx"]["refused"]
    assert "onnx->safetensors" in listing["llama"]["paths"] and "onnx->safetensors" not in listing["bert"]["paths"]


def test_archs_human_listing_names_every_family(listing):
    r = run_cli("archs")
    assert r.returncode == 0, r.stderr
    rows = [line.split("│")[1:-1] for line in r.stdout.splitlines() if line.startswith("│")]
    rows = [cells for cells in rows if cells[0].strip()]  # not a folded cell's second line
    assert [cells[0].strip() for cells in rows] == sorted(listing)
    onnx = list(listing["llama"]["formats"]).index("onnx") + 1  # after the family
    cell = {cells[0].strip(): cells[onnx].strip() for cells in rows}
    built = {tiny.SAMPLES[name].family for name in BUILT}
    assert {name for name, text in cell.items() if text.endswith("builder")} == built
    # read ("r") where the graph walk knows the family's exports (our own graphs read back by their names anyway)
    assert {name for name in built if cell[name] == "rw builder"} == {
        name for name in built if archs.registry()[name].onnx.read_back}
    assert "Q4_K_M" in r.stdout


def test_archs_one_family_and_an_unsupported_one(listing):
    r = run_cli("archs", "qwen3", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [listing["qwen3"]], r.stderr
    r = run_cli("archs", "qwen4")
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert "unsupported architecture 'qwen4'" in r.stderr and "closest supported: qwen3" in r.stderr, r.stderr
