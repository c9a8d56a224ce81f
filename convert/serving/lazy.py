"""Tensors computed from other tensors when a writer first asks for their bytes: a module's packed weight, scales
and zero points come out of one quantization of its float weight, and a float weight out of one dequantization of
its packed parts. One computation is kept at a time (writers go module by module), so memory stays bounded by one
module's tensors."""
from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from modelport.formats.model import TensorRef

NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32", torch.int64: "I64",
         torch.int8: "I8", torch.uint8: "U8"}


# dtypes numpy lacks travel as their bit patterns (formats.model.NUMPY_DTYPES)
BITS = {"BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn}
NAMES.update({v: k for k, v in BITS.items()})
TORCH = {v: k for k, v in NAMES.items()}


def to_torch(arr: np.ndarray, dtype: str) -> torch.Tensor:
    """A pivot array as a torch tensor of `dtype` (copied only when read-only: torch tensors are writable)."""
    t = torch.from_numpy(np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy())
    return t.view(BITS[dtype]) if dtype in BITS else t


def to_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    return (t.view(torch.uint16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()


# glibc's malloc_trim, where there is one: the worker threads that read row blocks compute modules in their own
# malloc arenas, which keep freed blocks; handing them back after each module took the 1B bench's peak RSS from
# 0.74 to 0.62 GB
_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


class OneSlot:
    """The last computation, by key; threads reading row blocks of the same tensor wait for one computation."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.key: object = None
        self.value: dict[str, bytes] = {}

    def get(self, key: object, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, bytes]:
        with self.lock:
            if self.key != key:
                self.key, self.value = None, {}  # drop the previous module before computing the next
                if _TRIM:
                    _TRIM(0)
                self.value, self.key = {n: to_bytes(t) for n, t in compute().items()}, key
            return self.value


@dataclass(frozen=True)
class Computed:
    """Stored bytes that are one part (`part`) of the computation `compute` under `key` (unique to one module of
    one conversion), kept in `slot` (duck-types FileSlice). Readers and writers keep separate slots: a writer's
    computation reads a reader's."""

    slot: OneSlot
    key: object
    part: str
    nbytes: int
    compute: Callable[[], dict[str, torch.Tensor]]

    def read(self, start: int = 0, stop: int | None = None) -> bytes:
        data = self.slot.get(self.key, self.compute)[self.part]
        if len(data) != self.nbytes:
            raise AssertionError(f"{self.part}: computed {len(data)} bytes, planned {self.nbytes}")
        return data[start:stop]


def computed(slot: OneSlot, key: object, part: str, shape: tuple[int, ...], dtype: str,
             compute: Callable[[], dict[str, torch.Tensor]]) -> TensorRef:
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=TORCH[dtype]).element_size()
    return TensorRef.on_disk(Computed(slot, key, part, nbytes, compute), tuple(shape), dtype)
