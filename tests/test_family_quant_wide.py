"""HF -> Q4_K_M byte-identical to llama-quantize's at the "wide" shape, where rows are multiples of 256 and there are
enough layers for the preset's real type choices (the tiny shape takes K-quant fallbacks): phi3's fused attn_qkv and
untied output, gemma2's tied embedding (which llama.cpp also uses as the output) and extra norms."""
from __future__ import annotations

import pytest


from support.quantize import assert_equals_llama_quantize


@pytest.mark.parametrize("family", ("gemma2", "phi3"))
def test_wide_q4_k_m_equals_llama_quantize(family, checkpoints, tmp_path):
    src = checkpoints(family, shape="wide")
    a = assert_equals_llama_quantize(src, tmp_path)
    assert {"Q4_K", "Q6_K"} <= {t.dtype for t in a.tensors.values()}  # the preset's own choices, not fallbacks
