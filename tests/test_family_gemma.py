"""Gemma's (1 + w) norms: GGUF holds w + 1 (as llama.cpp's converter writes it), GGUF -> HF takes the 1 off. From a
BF16 checkpoint, the usual published precision, the round trip is bit-exact: w + 1 and (w + 1) - 1 are exact in F32
for BF16 values of w (not too close to 0), so only F32 sources need tests/test_families.py's ROUNDTRIP_ATOL.
The tokenizer, laid out as Gemma's (no dummy prefix), says so in the GGUF as GemmaModel writes it."""
from __future__ import annotations

import numpy as np
import pytest

from modelport import api
from modelport.convert.dtypes import to_f32
from modelport.formats import gguf


@pytest.mark.parametrize("family", ("gemma", "gemma2", "gemma3"))
def test_bf16_norms_round_trip_bit_exact(family, checkpoints, tmp_path):
    src = checkpoints(family, "bfloat16")
    api.convert(src, tmp_path / "m.gguf")
    contents = gguf.read(tmp_path / "m.gguf")
    original = api.load(src)
    w = to_f32(original.tensors["model.norm.weight"].read(), "BF16")
    stored = contents.tensors["output_norm.weight"]
    assert stored.dtype == "F32"
    assert contents.get("tokenizer.ggml.add_space_prefix") is False
    np.testing.assert_array_equal(stored.read(), w + np.float32(1))  # what llama.cpp multiplies by
    api.convert(tmp_path / "m.gguf", tmp_path / "back")
    restored = api.load(tmp_path / "back")
    assert set(restored.tensors) == set(original.tensors)
    for name, ref in original.tensors.items():
        back = restored.tensors[name]
        assert back.result_dtype == "BF16", name
        assert np.array_equal(back.read(), ref.read()), name
