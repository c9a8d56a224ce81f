"""Phi-3's LongRoPE beyond the shared family tests (which run the 128k config at a context under its original 4096,
so on the short factors): the factor tensors and attention factor as Phi3MiniModel writes them; the long factors,
which llama.cpp takes when its context exceeds the original one and transformers when the sequence does (an
original length of 64 puts both past it); Phi-3-mini-4k's config, which has no rope scaling at all; and Phi-4-mini's
partial rotation (rope.dimension_count below head_dim, with factors for the rotated half only)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from gguf import Keys

from modelport import api
from modelport.formats import gguf
from modelport.validators.metrics import logit_parity
from modelport.samples import tiny
from modelport.validators.runtimes import LlamaCpp, Transformers

from support.variants import hf_logits, variant

VARIANTS = {"128k_long_factors": dict(original_max_position_embeddings=64),
            "4k_no_scaling": dict(rope_scaling=None, max_position_embeddings=4096, sliding_window=2047),
            "partial_rotary": dict(partial_rotary_factor=0.5,
                                   rope_scaling=tiny.longrope({"head_dim": tiny.SHAPES["tiny"]["head_dim"] // 2}))}


def test_longrope_factor_tensors_and_attention_factor(checkpoints, tmp_path):
    src = checkpoints("phi3")
    api.convert(src, tmp_path / "m.gguf", dtype="f32")
    contents = gguf.read(tmp_path / "m.gguf")
    scaling = api.load(src).config["rope_scaling"]
    for kind in ("long", "short"):
        stored = contents.tensors[f"rope_factors_{kind}.weight"]
        assert stored.dtype == "F32"
        np.testing.assert_array_equal(stored.read(), np.float32(scaling[f"{kind}_factor"]))
    scale = 131072 / 4096
    attn_factor, _, _ = contents.kv[Keys.Rope.SCALING_ATTN_FACTOR.format(arch="phi3")]
    assert np.float32(attn_factor) == np.float32(math.sqrt(1 + math.log(scale) / math.log(4096)))


@pytest.mark.parametrize("name", VARIANTS)
def test_rope_variants_run_like_transformers(name, checkpoints, mixed_text, tmp_path):
    base = checkpoints("phi3")
    src = variant(base, tmp_path / name, **VARIANTS[name])
    ids = Transformers(src).tokenize(mixed_text)
    ref = hf_logits(src, ids)
    assert logit_parity(ref, hf_logits(base, ids))["kl_mean"] > 1e-4, f"{name} does not change the logits"
    api.convert(src, tmp_path / f"{name}.gguf", dtype="f32")
    contents = gguf.read(tmp_path / f"{name}.gguf")
    longrope = api.load(src).config.get("rope_scaling") is not None
    assert ("rope_factors_long.weight" in contents.tensors) == longrope
    llm = LlamaCpp(tmp_path / f"{name}.gguf")
    parity = logit_parity(ref, llm.logits(ids))
    llm.close()
    print(f"phi3 {name} f32: {parity}")
    assert parity["kl_mean"] <= 1e-5
