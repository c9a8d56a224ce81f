"""HF -> Q4_K_M byte-identical to llama-quantize's at the "wide" shape, where rows are multiples of 256 and there are
enough layers for the preset's real type choices (the tiny shape takes K-quant fallbacks): phi3's fused attn_qkv and
untied output, gemma2's tied embedding (which llama.cpp also uses as the output) and extra norms."""
from __future__ import annotations

import pytest

from modelport import api
from modelport.formats import gguf

from test_quantize import llama_quantize


@pytest.mark.parametrize("family", ("gemma2", "phi3"))
def test_wide_q4_k_m_equals_llama_quantize(family, checkpoints, tmp_path):
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
    assert {"Q4_K", "Q6_K"} <= {t.dtype for t in a.tensors.values()}  # the preset's own choices, not fallbacks
