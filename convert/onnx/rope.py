"""Rotary embeddings as transformers' rope init functions compute them (float32), baked into the graph.

Written with numpy rather than imported from transformers' ROPE_INIT_FUNCTIONS, which need torch; each function
mirrors its transformers counterpart line by line (modeling_rope_utils.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from modelport.formats.errors import BadInput, Unsupported

from modelport.convert.archs.base import rope


@dataclass(frozen=True)
class Rope:
    """What the graph rotates with: inverse frequencies (rotated dimensions / 2); for LongRoPE also the long ones,
    which transformers takes once the sequence is longer than `switch` tokens; cos and sin times `scale`."""

    inv_freq: np.ndarray
    long_inv_freq: np.ndarray | None = None
    switch: int | None = None
    scale: float = 1.0

    @property
    def dims(self) -> int:
        """Rotated dimensions per head (the rest pass through: partial_rotary_factor)."""
        return 2 * len(self.inv_freq)


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


def _longrope(params: dict, dim: int, config: dict) -> Rope:
    """The default frequencies divided by the short and by the long factors; the attention factor from the context
    ratio where the config gives none."""
    original = config.get("original_max_position_embeddings")
    factor = config["max_position_embeddings"] / original if original else params.get("factor", 1.0)
    original = original or config["max_position_embeddings"]
    scale = params.get("attention_factor")
    if scale is None:
        scale = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)

    def divided(key: str) -> np.ndarray:
        factors = np.asarray(params[key], np.float32)
        if factors.shape != exponents.shape:
            raise BadInput("config.json", f"rope_scaling {key} needs {len(exponents)} entries (rotated dimensions / 2)")
        return (np.float32(1.0) / (factors * np.float32(params["rope_theta"]) ** exponents)).astype(np.float32)

    return Rope(divided("short_factor"), divided("long_factor"), original, scale)


INIT = {"default": lambda params, dim, config: Rope(_default(params, dim)),
        "linear": lambda params, dim, config: Rope(_linear(params, dim)),
        "llama3": lambda params, dim, config: Rope(_llama3(params, dim)),
        "longrope": _longrope}


def of(config: dict, head_dim: int) -> Rope:
    """The config's rotary embedding over int(head_dim * partial_rotary_factor) dimensions, as transformers'."""
    params = rope(config)
    kind = params.get("rope_type", "default")
    if kind not in INIT:
        raise Unsupported(None, f"rope type {kind!r} has no ONNX builder yet (supported: {', '.join(INIT)})")
    dim = int(head_dim * params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
    return INIT[kind](params, dim, config)
