"""Validation holds the reference in fp32 (4 bytes per parameter) plus the candidate as stored; checking that
against MemAvailable up front turns an OOM kill minutes in into a one-line refusal."""
from __future__ import annotations

from pathlib import Path

from modelport.formats.errors import BadInput

FP32_BYTES = 4
OVERHEAD = 1.4  # activations, both sides' logits for every position, loading transients (1B bench: 1.37x)


def available_bytes(meminfo: str | Path = "/proc/meminfo") -> int | None:
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None  # not Linux: no check


def need_bytes(ref_params: int, cand_bytes: int) -> int:
    return int((ref_params * FP32_BYTES + cand_bytes) * OVERHEAD)


def check(ref_params: int, cand_bytes: int, available: int | None) -> None:
    need = need_bytes(ref_params, cand_bytes)
    if available is not None and need > available:
        raise BadInput(None, f"validation needs about {need / 2**30:.1f} GiB (reference in fp32 at 4 bytes per "
                             f"parameter plus the candidate) but only {available / 2**30:.1f} GiB is available")
