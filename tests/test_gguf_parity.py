"""HF -> GGUF through our converter, checked in llama.cpp against transformers fp32 on the same token ids."""
from __future__ import annotations

import json

import pytest

from modelport.validators.metrics import logit_parity
from modelport.validators.runtimes import LlamaCpp, Transformers

from support.cli import run_cli
from support.families import LLAMA_LIKE as FAMILIES

# mean KL bounds per GGUF dtype against transformers fp32 (bf16 keeps 8 bits of mantissa: checked loose)
BOUNDS = {"f32": (1e-5, 1.0), "f16": (1e-5, 1.0), "bf16": (1e-3, 0.9)}


@pytest.fixture(scope="module")
def references(checkpoints, mixed_text):
    """family -> (HF ids of the mixed text, transformers fp32 logits)."""
    out = {}
    for family in FAMILIES:
        ref = Transformers(checkpoints(family))
        ids = ref.tokenize(mixed_text)
        out[family] = (ids, ref.logits(ids))
    return out


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_logits_and_tokens_match_transformers(family, dtype, checkpoints, references, mixed_text, tmp_path):
    dst = tmp_path / f"{family}-{dtype}.gguf"
    r = run_cli("convert", checkpoints(family), dst, "--dtype", dtype, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["target_format"] == "gguf"
    ids, ref_logits = references[family]
    llm = LlamaCpp(dst)
    assert llm.tokenize(mixed_text) == ids, "llama.cpp's tokenizer on the GGUF differs from the HF tokenizer"
    parity = logit_parity(ref_logits, llm.logits(ids))
    print(f"{family} {dtype}: {parity}")
    max_kl, min_top1 = BOUNDS[dtype]
    assert parity["kl_mean"] <= max_kl
    assert parity["top1"] >= min_top1
    llm.close()
