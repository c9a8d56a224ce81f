"""Logit parity metrics between a reference and a candidate on the same token ids."""
from __future__ import annotations

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_per_position(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """KL(ref || cand) at each position, in nats."""
    lp, lq = log_softmax(ref), log_softmax(cand)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def logit_parity(ref: np.ndarray, cand: np.ndarray) -> dict:
    kl = kl_per_position(ref, cand)
    return {"kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)), "kl_max": float(kl.max()),
            "top1": float((ref.argmax(-1) == cand.argmax(-1)).mean()),
            "max_abs_diff": float(np.abs(ref - cand).max())}
