"""A tiny checkpoint with some config.json fields changed (same weights): the settings a family's real config leaves
at llama.cpp's defaults, set off them so a test shows the GGUF carries them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


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
