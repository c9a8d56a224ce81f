"""GGUF -> HF folder: tensors bit-identical to the original, transformers loads it and computes the same logits."""
from __future__ import annotations

import numpy as np
import pytest

from modelport import api
from modelport.validators.runtimes import Transformers

from support.families import LLAMA_LIKE as FAMILIES


@pytest.mark.parametrize("torch_dtype,gguf_dtype", [("float32", "f32"), ("bfloat16", "bf16")])
@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_back_to_hf_is_identical(family, torch_dtype, gguf_dtype, checkpoints, mixed_text, tmp_path):
    src = checkpoints(family, torch_dtype)
    gguf = tmp_path / "m.gguf"
    api.convert(src, gguf, dtype=gguf_dtype)
    back = tmp_path / "back"
    api.convert(gguf, back)

    original, restored = api.load(src), api.load(back)
    assert set(restored.tensors) == set(original.tensors)
    for name, ref in original.tensors.items():
        got = restored.tensors[name]
        assert got.dtype == ref.dtype, name
        assert got.read().tobytes() == ref.read().tobytes(), f"{name} differs"

    a, b = Transformers(src), Transformers(back)
    ids = a.tokenize(mixed_text)
    assert b.tokenize(mixed_text) == ids, "the tokenizer rebuilt from GGUF gives other ids"
    assert b.tokenizer.decode(ids, skip_special_tokens=True) == a.tokenizer.decode(ids, skip_special_tokens=True)
    np.testing.assert_array_equal(a.logits(ids), b.logits(ids))
