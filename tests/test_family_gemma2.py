"""Gemma 2's soft-capping, set low enough to bite: attention scores and final logits are squashed through
cap * tanh(x / cap). The real caps (50, 30) are also llama.cpp's defaults and barely touch a tiny model's values, so
this variant shows the GGUF carries and llama.cpp applies the config's own. The reference runtime runs such a model
with transformers' eager attention, its only implementation that applies the attention cap (sdpa leaves it out)."""
from __future__ import annotations

import numpy as np

from modelport import api
from modelport.validators.metrics import logit_parity
from modelport.validators.runtimes import LlamaCpp, Transformers

from support.variants import hf_logits, variant

ATTN_CAP, FINAL_CAP = 0.2, 3.0


def test_soft_capping_follows_the_config(checkpoints, mixed_text, tmp_path):
    src = variant(checkpoints("gemma2"), tmp_path / "capped", attn_logit_softcapping=ATTN_CAP,
                  final_logit_softcapping=FINAL_CAP)
    reference = Transformers(src)
    ids = reference.tokenize(mixed_text)
    ref = reference.logits(ids)
    np.testing.assert_array_equal(ref, hf_logits(src, ids, "eager"))  # the runtime's reference is eager attention
    assert logit_parity(ref, hf_logits(src, ids, "sdpa"))["kl_mean"] > 1e-4, "the attention cap does not bite"
    api.convert(src, tmp_path / "capped.gguf", dtype="f32")
    llm = LlamaCpp(tmp_path / "capped.gguf")
    assert llm.tokenize(mixed_text) == ids
    logits = llm.logits(ids)
    llm.close()
    parity = logit_parity(ref, logits)
    print(f"gemma2 capped f32: {parity}")
    assert parity["kl_mean"] <= 1e-5
    assert np.abs(logits).max() <= FINAL_CAP
