"""The families beyond the first four, each through every GGUF path: HF -> GGUF f16 in llama.cpp against
transformers fp32, GGUF -> HF back to the source's tensors, and HF -> Q4_K_M byte-identical to llama-quantize's.

A family joins by being registered and having a sample in modelport.samples.tiny.SAMPLES (tests/support/families.py
reads MORE_FAMILIES from both)."""
from __future__ import annotations

import numpy as np
import pytest

from modelport import api
from modelport.convert import archs
from modelport.samples import tiny
from modelport.validators.metrics import logit_parity
from modelport.validators.runtimes import LlamaCpp, Transformers

from support.cli import run_cli
from support.families import MORE_FAMILIES, ROUNDTRIP_ATOL
from support.quantize import assert_equals_llama_quantize


def test_every_registered_family_has_a_sample():
    """Each family in the registry has a tiny model to test it with, and each sample converts through a registered
    family (variants such as falcon40b or gemma3 through their config's model_type)."""
    assert {sample.family for sample in tiny.SAMPLES.values()} == set(archs.registry())


@pytest.mark.parametrize("family", MORE_FAMILIES)
def test_f16_gguf_runs_in_llama_cpp_like_transformers(family, checkpoints, hf_reference, mixed_text, tmp_path):
    dst = tmp_path / f"{family}.gguf"
    r = run_cli("convert", checkpoints(family), dst, "--dtype", "f16")
    assert r.returncode == 0, r.stderr
    ids, ref_logits = hf_reference(family)
    llm = LlamaCpp(dst)
    assert llm.tokenize(mixed_text) == ids, "llama.cpp's tokenizer on the GGUF differs from the HF tokenizer"
    parity = logit_parity(ref_logits, llm.logits(ids))
    llm.close()
    print(f"{family} f16: {parity}")
    assert parity["kl_mean"] <= 1e-5


@pytest.mark.parametrize("family", MORE_FAMILIES)
def test_gguf_back_to_hf_gives_the_source_tensors(family, checkpoints, hf_reference, tmp_path):
    src = checkpoints(family)
    api.convert(src, tmp_path / "m.gguf", dtype="f32")
    api.convert(tmp_path / "m.gguf", tmp_path / "back")
    original, restored = api.load(src), api.load(tmp_path / "back")
    assert set(restored.tensors) == set(original.tensors)
    atol = ROUNDTRIP_ATOL.get(family, 0.0)
    for name, ref in original.tensors.items():
        np.testing.assert_allclose(restored.tensors[name].read(), ref.read(), rtol=0, atol=atol, err_msg=name)
    ids, ref_logits = hf_reference(family)
    logits = Transformers(tmp_path / "back").logits(ids)
    assert logit_parity(ref_logits, logits)["kl_mean"] <= 1e-9


@pytest.mark.parametrize("family", MORE_FAMILIES)
def test_q4_k_m_equals_llama_quantize(family, checkpoints, tmp_path):
    assert_equals_llama_quantize(checkpoints(family), tmp_path)
