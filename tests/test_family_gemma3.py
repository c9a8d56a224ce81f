"""Gemma 3's rope settings off llama.cpp's defaults: a local rope base other than 10000 (rope.freq_base_swa) and the
linear rope scaling of the 4B-27B checkpoints (global layers only). Each changes transformers' logits, and the GGUF
runs in llama.cpp as transformers runs the changed config."""
from __future__ import annotations

import pytest

from modelport import api
from modelport.validators.metrics import logit_parity
from modelport.validators.runtimes import LlamaCpp, Transformers

from support.variants import hf_logits, variant

VARIANTS = {"local_rope_base": dict(rope_local_base_freq=100000.0),
            "linear_rope_scaling": dict(rope_scaling={"rope_type": "linear", "factor": 8.0})}


@pytest.mark.parametrize("name", VARIANTS)
def test_rope_settings_follow_the_config(name, checkpoints, mixed_text, tmp_path):
    base = checkpoints("gemma3")
    src = variant(base, tmp_path / name, **VARIANTS[name])
    ids = Transformers(src).tokenize(mixed_text)
    ref = hf_logits(src, ids)
    assert logit_parity(ref, hf_logits(base, ids))["kl_mean"] > 1e-4, f"{name} does not change the logits"
    api.convert(src, tmp_path / f"{name}.gguf", dtype="f32")
    llm = LlamaCpp(tmp_path / f"{name}.gguf")
    parity = logit_parity(ref, llm.logits(ids))
    llm.close()
    print(f"gemma3 {name} f32: {parity}")
    assert parity["kl_mean"] <= 1e-5
