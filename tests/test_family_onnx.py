"""optimum's place now that every family has our graph builder (issue 13): the fallback for a family without one (a
plugin's; llama with its builder switched off stands in), its export within issue 5's fp32 max |diff| 1e-4 in
onnxruntime's CPU EP, whole prompt and token by token through the KV cache; a clean refusal (exit 3) of what the
family's ONNX section says optimum gets wrong, and the evidence that each "wrong" is real; `modelport archs` listing
what the code supports. bert, an encoder, has modelport's own graph (convert/onnx/encoder.py), tested in
test_family_bert.py."""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest

from modelport import api
from modelport.convert import archs
from modelport.convert.archs.base import ROPE_BY_LENGTH
from modelport.convert.onnx import optimum as onnx_optimum
from modelport.formats.errors import Unsupported
from modelport.samples import tiny
from modelport.validators.runtimes import OnnxRuntime, Transformers

from support.cli import run_cli
from support.families import FAMILIES as BUILT

PROMPT = 40  # tokens of the mixed text
BOUND = 1e-4  # issue 5's fp32 max |logit diff|
# samples that differ from tiny.SAMPLES' in config.json only: a LongRoPE switch or a dynamic NTK rope limit near
# enough for a short test, which optimum's exports get wrong (phi3 and gemma have a graph builder, whose rope types
# are its own)
VARIANTS = {"phi3-longrope64": ("phi3", {"original_max_position_embeddings": 64}),
            "gemma-dynamic64": ("gemma", {"rope_scaling": {"rope_type": "dynamic", "factor": 4.0},
                                          "max_position_embeddings": 64})}


def test_every_family_has_a_graph_builder():
    """optimum is needed for nothing we convert (issue 13): every registered family's ONNX is our builder's."""
    assert [name for name, arch in archs.registry().items() if not arch.onnx.builder] == []


@pytest.fixture
def builderless(monkeypatch):
    """llama as a family without a graph builder (a plugin's, say), with `limits` its ONNX section gives optimum:
    what optimum's fallback is for, now that every family of ours has a builder. optimum is an optional extra (it
    caps transformers below 4.58): its tests are marked `optimum`."""

    def make(*limits):
        arch = archs.for_hf("llama")
        monkeypatch.setitem(archs.registry(), "llama",
                            replace(arch, onnx=replace(arch.onnx, builder=False, optimum=limits)))
    return make


@pytest.fixture(scope="module")
def sample(checkpoints, tmp_path_factory):
    """name (a tiny.SAMPLES name or a VARIANTS key) -> HF folder, for tests of optimum's own exports."""
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


@pytest.mark.optimum
def test_a_family_without_a_builder_goes_through_optimum(builderless, checkpoints, mixed_text, tmp_path):
    builderless()
    src = checkpoints("llama")
    result = api.convert(src, tmp_path / "onnx", to="onnx")
    assert any("optimum" in f["fallback"] for f in result.fallbacks), result.fallbacks
    ref = Transformers(src)
    ids = ref.tokenize(mixed_text)[:PROMPT]
    onnx = OnnxRuntime(tmp_path / "onnx")
    assert onnx.tokenize(mixed_text)[:PROMPT] == ids, "the folder's tokenizer.json tokenizes differently"
    want = ref.logits(ids)
    whole = float(np.abs(want - onnx.logits(ids)).max())
    steps = float(np.abs(want - _stepwise(onnx, ids)).max())
    print(f"llama via optimum, {len(ids)} tokens: onnxruntime vs transformers fp32 max |diff| {whole:.2e} "
          f"(whole prompt), {steps:.2e} (token by token through the KV cache)")
    assert whole <= BOUND and steps <= BOUND


def _stepwise(onnx: OnnxRuntime, ids: list[int]) -> np.ndarray:
    """Logits of each position, fed one token at a time with the cache the model returns."""
    past, rows = None, []
    for token in ids:
        logits, past = onnx.forward([token], past)
        rows.append(logits[-1])
    return np.stack(rows)


@pytest.mark.optimum
def test_gguf_source_exports_through_optimum(builderless, checkpoints, mixed_text, tmp_path):
    """A GGUF of a family optimum exports goes the same way (an HF folder written from it first)."""
    builderless()
    src = checkpoints("llama")
    api.convert(src, tmp_path / "m.gguf", dtype="f32")
    api.convert(tmp_path / "m.gguf", tmp_path / "onnx", to="onnx")
    ref = Transformers(src)
    ids = ref.tokenize(mixed_text)[:PROMPT]
    onnx = OnnxRuntime(tmp_path / "onnx")
    assert onnx.tokenize(mixed_text)[:PROMPT] == ids
    diff = float(np.abs(ref.logits(ids) - onnx.logits(ids)).max())
    print(f"llama GGUF f32 via optimum: onnxruntime vs transformers on the source, max |diff| {diff:.2e}")
    assert diff <= BOUND
    assert not list(tmp_path.glob(".modelport-hf-*"))


@pytest.mark.optimum
def test_a_limit_optimum_gets_wrong_is_refused_and_writes_nothing(builderless, checkpoints, tmp_path):
    builderless(ROPE_BY_LENGTH)
    src = tmp_path / "src"
    shutil.copytree(checkpoints("llama"), src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}))
    with pytest.raises(Unsupported, match=re.escape("no ONNX export for 'llama'")) as e:
        api.convert(src, tmp_path / "onnx", to="onnx")
    assert ROPE_BY_LENGTH.what in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "onnx").exists()


def _optimum_logits(src, out, ids):
    """optimum's own export of `src` (what modelport refuses to write), run in onnxruntime."""
    from optimum.exporters.onnx import main_export

    with contextlib.redirect_stdout(io.StringIO()), onnx_optimum.quiet():
        main_export(str(src), output=str(out), task="text-generation-with-past", device="cpu", do_validation=False)
    return OnnxRuntime(out).logits(ids)


@pytest.mark.optimum
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


@pytest.mark.optimum
def test_falcon_new_decoder_fails_in_optimums_trace(sample, tmp_path):
    """Falcon 40B's layout, which falcon's ONNX section says optimum does not export (the builder does; the read-back
    test exports the other samples): optimum's dummy cache has num_kv_heads heads, transformers' num_attention_heads."""
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
    assert not any(row["formats"]["onnx"]["refused"] for row in listing.values())  # optimum's limits: none go there
    assert "onnx->safetensors" in listing["llama"]["paths"] and "onnx->safetensors" not in listing["bert"]["paths"]


def test_archs_human_listing_names_every_family(listing):
    r = run_cli("archs")
    assert r.returncode == 0, r.stderr
    rows = [line.split("│")[1:-1] for line in r.stdout.splitlines() if line.startswith("│")]
    rows = [cells for cells in rows if cells[0].strip()]  # not a folded cell's second line
    assert [cells[0].strip() for cells in rows] == sorted(listing)
    onnx = list(listing["llama"]["formats"]).index("onnx") + 1  # after the family
    cell = {cells[0].strip(): cells[onnx].strip() for cells in rows}
    built = {tiny.SAMPLES[name].family for name in BUILT} | {name for name, arch in archs.registry().items()
                                                             if arch.onnx.encoder is not None}
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
