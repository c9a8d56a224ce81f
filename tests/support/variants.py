"""Variants the family tests share: a tiny checkpoint with some config.json fields changed (same weights), set off
llama.cpp's defaults so a test shows the GGUF carries them; and GGUFs as llama.cpp's converter writes them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from modelport import api
from modelport.formats import gguf
from modelport.validators.metrics import logit_parity
from modelport.validators.runtimes import Transformers

WRITER_KEYS = ("general.architecture", "general.alignment")  # gguf.write adds these itself


def variant(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    (dst / "config.json").write_text(json.dumps({**cfg, **changes}, indent=2), encoding="utf-8")
    return dst


def hf_logits(path: Path, ids: list[int], attn_implementation: str = "sdpa") -> np.ndarray:
    """transformers fp32 logits with a chosen attention implementation (only eager computes gemma2's soft-capping)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn_implementation)
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0].numpy()


def foreign_gguf(src: Path, dst: Path) -> Path:
    """SRC (an HF folder) as an f32 GGUF with llama.cpp's keys only (no modelport.* keys: no stored config.json,
    no sentence-transformers files): what llama.cpp's converter would write, so the way back must rebuild the
    config from the GGUF's own keys and tensors."""
    ours = dst.with_name(dst.stem + "-ours.gguf")
    api.convert(src, ours, dtype="f32")
    contents = gguf.read(ours)
    kv = [(k, v, t, sub) for k, (v, t, sub) in contents.kv.items()
          if k not in WRITER_KEYS and not k.startswith("modelport.")]
    gguf.write(dst, contents.get("general.architecture"), kv, list(contents.tensors.items()))
    return dst


def assert_same_model(src: Path, back: Path, text: str, atol: float = 0.0) -> None:
    """BACK (an HF folder rebuilt from a GGUF) holds SRC's tensors (within `atol`) and transformers runs it as SRC."""
    original, restored = api.load(src), api.load(back)
    assert set(restored.tensors) == set(original.tensors)
    for name, ref in original.tensors.items():
        np.testing.assert_allclose(restored.tensors[name].read(), ref.read(), rtol=0, atol=atol, err_msg=name)
    hf = Transformers(src)
    ids = hf.tokenize(text)
    parity = logit_parity(hf.logits(ids), Transformers(back).logits(ids))
    assert parity["kl_mean"] <= 1e-9, parity
