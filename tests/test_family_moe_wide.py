"""HF -> Q4_K_M of mixture-of-experts models byte-identical to llama-quantize's at the "wide" shape (rows of 256,
8 layers), where the preset's own choices apply instead of the tiny shape's fallbacks: stacked ffn_down_exps get
more bits by block number, and with exactly 8 experts (Mixtral 8x7B's count) attn_k/attn_v go Q8_0 and
attn_output Q5_K."""
from __future__ import annotations

import pytest


from support.quantize import assert_equals_llama_quantize


@pytest.mark.parametrize("family", ("mixtral8",))
def test_wide_moe_q4_k_m_equals_llama_quantize(family, checkpoints, tmp_path):
    src = checkpoints(family, shape="wide")
    a = assert_equals_llama_quantize(src, tmp_path)
    types = {name.split(".")[-2]: set() for name in a.tensors}
    for name, t in a.tensors.items():
        types[name.split(".")[-2]].add(t.dtype)
    assert types["attn_v"] == types["attn_k"] == {"Q8_0"} and types["attn_output"] == {"Q5_K"}
    assert types["ffn_down_exps"] == {"Q4_K", "Q6_K"} and types["ffn_gate_exps"] == {"Q4_K"}
