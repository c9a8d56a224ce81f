"""gemma, gemma2, gemma3 and phi3 GGUFs without our stored config.json (as llama.cpp's own converter writes them)
come back to HF folders transformers runs like the source: the config rebuilt from the keys plus what llama.cpp
assumes where no key speaks (gemma2/3's query scale) and what only tensors say (phi3's LongRoPE factors; its
partial rotation from rope.dimension_count). And a
query scale llama.cpp cannot honour is refused, exit 3, naming config.json, before anything is written."""
from __future__ import annotations

import json

import pytest

from modelport import api

from support.cli import run_cli
from support.families import ROUNDTRIP_ATOL
from support.variants import assert_same_model, foreign_gguf, variant

CASES = {"gemma": {}, "gemma2": {}, "gemma3-linear-rope": {"rope_scaling": {"rope_type": "linear", "factor": 8.0}},
         "phi3": {}, "phi3-partial-rotary": {"partial_rotary_factor": 0.5, "rope_scaling": None}}


@pytest.mark.parametrize("case", CASES)
def test_gguf_without_our_config_comes_back_from_its_keys(case, checkpoints, mixed_text, tmp_path):
    family = case.split("-")[0]
    src = variant(checkpoints(family), tmp_path / "src", **CASES[case])
    foreign_gguf(src, tmp_path / "foreign.gguf")
    api.convert(tmp_path / "foreign.gguf", tmp_path / "back")
    rebuilt = json.loads((tmp_path / "back" / "config.json").read_text())
    assert rebuilt != json.loads((src / "config.json").read_text())  # made from the keys, not copied
    assert_same_model(src, tmp_path / "back", mixed_text, ROUNDTRIP_ATOL.get(family, 0.0))


@pytest.mark.parametrize("family", ("gemma2", "gemma3"))
def test_query_scale_llama_cpp_cannot_honour_is_refused(family, checkpoints, tmp_path):
    src = variant(checkpoints(family), tmp_path / "src", query_pre_attn_scalar=256)  # head_dim is 16
    r = run_cli("convert", src, tmp_path / "out.gguf")
    assert r.returncode == 3, r.stderr
    assert "config.json" in r.stderr and "query_pre_attn_scalar" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list(tmp_path.glob("out.gguf*"))
