"""HF -> Q4_K_M of mixture-of-experts models byte-identical to llama-quantize's at the "wide" shape (rows of 256,
8 layers), where the preset's own choices apply instead of the tiny shape's fallbacks: stacked ffn_down_exps get
more bits by block number, and with exactly 8 experts (Mixtral 8x7B's count) attn_k/attn_v go Q8_0 and
attn_output Q5_K."""
from __future__ import annotations

import pytest

from modelport import api
from modelport.formats import gguf

from test_quantize import llama_quantize


@pytest.mark.parametrize("family", ("mixtral8",))
def test_wide_moe_q4_k_m_equals_llama_quantize(family, checkpoints, tmp_path):
    src = checkpoints(family, shape="wide")
    api.convert(src, tmp_path / "lossless.gguf", dtype="f32")
    llama_quantize(tmp_path / "lossless.gguf", tmp_path / "theirs.gguf", "Q4_K_M")
    api.convert(src, tmp_path / "ours.gguf", quant="Q4_K_M")
    a, b = gguf.read(tmp_path / "ours.gguf"), gguf.read(tmp_path / "theirs.gguf")
    assert list(a.tensors) == list(b.tensors)
    for name, ta in a.tensors.items():
        tb = b.tensors[name]
        assert (ta.dtype, ta.shape) == (tb.dtype, tb.shape), name
        assert ta.stored.read() == tb.stored.read(), f"{name} ({ta.dtype}) differs from llama-quantize's"
    types = {name.split(".")[-2]: set() for name in a.tensors}
    for name, t in a.tensors.items():
        types[name.split(".")[-2]].add(t.dtype)
    assert types["attn_v"] == types["attn_k"] == {"Q8_0"} and types["attn_output"] == {"Q5_K"}
    assert types["ffn_down_exps"] == {"Q4_K", "Q6_K"} and types["ffn_gate_exps"] == {"Q4_K"}
