"""What a validation run needs in memory, checked against MemAvailable up front: an OOM kill minutes in becomes a
one-line refusal. The sides run in turn (the reference's logits go to a file before the candidate loads), so the
need is that of the side that needs most, not their sum."""
from __future__ import annotations

from pathlib import Path

from modelport.formats.errors import BadInput

FP32_BYTES = 4
OVERHEAD = 1.4  # loading transients and activations over the weights held (1B bench: 1.37x)
STREAM_COPIES = 3  # streamed reference: the largest tensor as stored, cast to fp32, and the module's output
LOGIT_COPIES = 3  # one text's logits: llama-cpp-python's scores, llama.cpp's output and compute buffers (a 512-token
# batch each at most) or the reference's output and its write; the saved logits stream in row blocks (1B bench,
# candidate from a saved reference: 2.92 GB peak with the 0.8 GB model)


def available_bytes(meminfo: str | Path = "/proc/meminfo") -> int | None:
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None  # not Linux: no check


def in_memory(parameters: int) -> int:
    """A reference held whole in fp32."""
    return int(parameters * FP32_BYTES * OVERHEAD)


def streamed(largest_tensor_elements: int) -> int:
    """A reference whose weights are read from the checkpoint module by module."""
    return largest_tensor_elements * FP32_BYTES * STREAM_COPIES


def stored(nbytes: int) -> int:
    """A side that runs its weights as stored (llama.cpp, onnxruntime)."""
    return int(nbytes * OVERHEAD)


def logits(tokens: int, vocab: int) -> int:
    return tokens * vocab * FP32_BYTES * LOGIT_COPIES


def check(needs: dict[str, int], available: int | None) -> None:
    """`needs`: side description -> bytes; refuses when the largest does not fit."""
    what, need = max(needs.items(), key=lambda kv: kv[1])
    if available is not None and need > available:
        raise BadInput(None, f"validation needs about {need / 2**30:.1f} GiB for the {what} but only "
                             f"{available / 2**30:.1f} GiB is available")
