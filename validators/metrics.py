"""Logit parity metrics between a reference and a candidate on the same token ids."""
from __future__ import annotations

from typing import Iterable

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


ROWS = 64  # positions per block: a 128k vocabulary in float64 stays ~64 MiB per array


def _block(r: np.ndarray, c: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, ...]:
    lp, lq = log_softmax(r), log_softmax(c)
    rows = np.arange(len(r))
    return ((np.exp(lp) * (lp - lq)).sum(-1), r.argmax(-1) == c.argmax(-1), np.abs(r - c).max(-1),
            -lp[rows, nxt], -lq[rows, nxt])


def per_position(ref: np.ndarray | Iterable[np.ndarray], cand: np.ndarray, ids: list[int]) -> dict[str, np.ndarray]:
    """Per-position KL, top-1 agreement, max |logit diff|, and each side's NLL of the next token (the last position
    has no next token: NaN), in row blocks so a long text and a large vocabulary do not blow up memory. `ref` is
    the reference's logits, or its consecutive row blocks as a saved reference streams them."""
    keys = ("kl", "top1", "max_abs", "nll_ref", "nll_cand")
    n = len(ids)
    out = {k: np.empty(n, dtype=bool if k == "top1" else np.float64) for k in keys}
    nxt = np.array(list(ids[1:]) + [0])
    blocks = (ref[s:s + ROWS] for s in range(0, n, ROWS)) if isinstance(ref, np.ndarray) else ref
    s = 0
    for r in blocks:
        for k, v in zip(keys, _block(r, cand[s:s + len(r)], nxt[s:s + len(r)])):
            out[k][s:s + len(r)] = v
        s += len(r)
    if s != n:
        raise ValueError(f"reference logits cover {s} positions, not {n}")
    out["nll_ref"][-1] = out["nll_cand"][-1] = np.nan
    return out


def summarize(pos: dict[str, np.ndarray]) -> dict:
    """KL mean/p99/max, top-1 agreement, max |logit diff|, perplexities and their ratio (candidate / reference)."""
    kl = pos["kl"]
    ppl_ref = float(np.exp(np.nanmean(pos["nll_ref"]))) if len(kl) > 1 else float("nan")
    ppl_cand = float(np.exp(np.nanmean(pos["nll_cand"]))) if len(kl) > 1 else float("nan")
    return {"positions": int(len(kl)), "kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)),
            "kl_max": float(kl.max()), "top1": float(pos["top1"].mean()), "max_abs_diff": float(pos["max_abs"].max()),
            "ppl_ref": ppl_ref, "ppl_cand": ppl_cand, "ppl_ratio": ppl_cand / ppl_ref}
