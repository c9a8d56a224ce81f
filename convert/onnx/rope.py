"""Rotary inverse frequencies as transformers' rope init functions compute them (float32), baked into the graph.

Written with numpy rather than imported from transformers' ROPE_INIT_FUNCTIONS, which need torch; each function
mirrors its transformers counterpart line by line (modeling_rope_utils.py)."""
from __future__ import annotations

import math

import numpy as np

from modelport.formats.errors import Unsupported

from modelport.convert.archs.base import rope


def _default(params: dict, dim: int) -> np.ndarray:
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (np.float32(1.0) / (np.float32(params["rope_theta"]) ** exponents)).astype(np.float32)


def _linear(params: dict, dim: int) -> np.ndarray:
    return (_default(params, dim) / np.float32(params["factor"])).astype(np.float32)


def _llama3(params: dict, dim: int) -> np.ndarray:
    inv_freq = _default(params, dim)
    factor = params["factor"]
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    old_ctx = params["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
    smooth = ((old_ctx / wavelen - low) / (high - low)).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


INIT = {"default": _default, "linear": _linear, "llama3": _llama3}


def inv_freq(config: dict, head_dim: int) -> np.ndarray:
    """[head_dim / 2] float32 inverse frequencies of the config's rope type."""
    params = rope(config)
    kind = params.get("rope_type", "default")
    if kind not in INIT:
        raise Unsupported(None, f"rope type {kind!r} has no ONNX builder yet (supported: {', '.join(INIT)})")
    return INIT[kind](params, head_dim)
