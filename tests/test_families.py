"""The families beyond the first four, each through every GGUF path: HF -> GGUF f16 in llama.cpp against
transformers fp32, GGUF -> HF back to the source's tensors, and HF -> Q4_K_M byte-identical to llama-quantize's.

A family joins by adding its name to MORE_FAMILIES (and its shrunk config to modelport.samples.tiny.CONFIGS)."""
from __future__ import annotations

import numpy as np
import pytest

from modelport import api
from modelport.validators.metrics import logit_parity
from modelport.validators.runtimes import LlamaCpp, Transformers

from helpers import run_cli
from test_quantize import assert_equals_llama_quantize

MORE_FAMILIES: tuple[str, ...] = ("gpt2", "starcoder2", "falcon", "falcon40b", "falcon2", "mpt",
                                   "gemma", "gemma2", "phi3", "gemma3", "mixtral", "qwen2_moe", "qwen3_moe",
                                   "granite")
# GGUF -> HF tolerance where a family's documented transform is not exact in f32 (e.g. gemma's norm + 1 offset)
# gemma: norms go to GGUF as F32 (w + 1) and back as (w + 1) - 1, within half an ulp of (w + 1): below 1e-6 for
# |w| < 8 (exact for BF16/F16 sources, see tests/test_family_gemma.py)
ROUNDTRIP_ATOL: dict[str, float] = {"gemma": 1e-6, "gemma2": 1e-6, "gemma3": 1e-6}


@pytest.fixture(scope="module")
def reference(checkpoints, mixed_text):
    """family -> (HF ids of the mixed text, transformers fp32 logits), computed once per family."""
    cache: dict[str, tuple[list[int], np.ndarray]] = {}

    def get(family: str):
        if family not in cache:
            ref = Transformers(checkpoints(family))
            ids = ref.tokenize(mixed_text)
            cache[family] = (ids, ref.logits(ids))
        return cache[family]

    return get


@pytest.mark.parametrize("family", MORE_FAMILIES)
def test_f16_gguf_runs_in_llama_cpp_like_transformers(family, checkpoints, reference, mixed_text, tmp_path):
    dst = tmp_path / f"{family}.gguf"
    r = run_cli("convert", checkpoints(family), dst, "--dtype", "f16")
    assert r.returncode == 0, r.stderr
    ids, ref_logits = reference(family)
    llm = LlamaCpp(dst)
    assert llm.tokenize(mixed_text) == ids, "llama.cpp's tokenizer on the GGUF differs from the HF tokenizer"
    parity = logit_parity(ref_logits, llm.logits(ids))
    llm.close()
    print(f"{family} f16: {parity}")
    assert parity["kl_mean"] <= 1e-5


@pytest.mark.parametrize("family", MORE_FAMILIES)
def test_gguf_back_to_hf_gives_the_source_tensors(family, checkpoints, reference, tmp_path):
    src = checkpoints(family)
    api.convert(src, tmp_path / "m.gguf", dtype="f32")
    api.convert(tmp_path / "m.gguf", tmp_path / "back")
    original, restored = api.load(src), api.load(tmp_path / "back")
    assert set(restored.tensors) == set(original.tensors)
    atol = ROUNDTRIP_ATOL.get(family, 0.0)
    for name, ref in original.tensors.items():
        np.testing.assert_allclose(restored.tensors[name].read(), ref.read(), rtol=0, atol=atol, err_msg=name)
    ids, ref_logits = reference(family)
    logits = Transformers(tmp_path / "back").logits(ids)
    assert logit_parity(ref_logits, logits)["kl_mean"] <= 1e-9


@pytest.mark.parametrize("family", MORE_FAMILIES)
def test_q4_k_m_equals_llama_quantize(family, checkpoints, tmp_path):
    assert_equals_llama_quantize(checkpoints(family), tmp_path)
