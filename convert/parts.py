"""Several tensors computed together from one source tensor (a quantizer's weight, scales and zero points or
biases): each is a lazy TensorRef whose bytes are `PartSlice`s of one `Parts`. Whichever part is read first computes
all parts for its rows and keeps the others' rows until they are read, so the source is read and quantized once
however the writer orders the parts, and peak memory stays a row block plus the small parts of one tensor."""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from modelport.formats.model import CHUNK_BYTES, TensorRef

GROUP_BYTES = CHUNK_BYTES * 2  # source bytes quantized in one go: bounds memory whatever range a reader asks for

Compute = Callable[[np.ndarray], tuple[np.ndarray, ...]]  # source rows -> each part's rows (weight, scales, ...)


@dataclass(frozen=True)
class Window:
    """Bytes [start, start + nbytes) of another stored slice: a row range of a source tensor."""

    stored: object
    start: int
    nbytes: int

    def read(self, start: int = 0, stop: int | None = None):
        return self.stored.read(self.start + start, self.start + (self.nbytes if stop is None else stop))


class Parts:
    """Computes rows of all parts at once and keeps each part's rows until that part has been read once in full."""

    def __init__(self, source: TensorRef, compute: Compute, row_bytes: tuple[int, ...]):
        self.source, self.compute, self.row_bytes = source, compute, row_bytes
        self.rows = source.result_rows
        self.group = max(1, GROUP_BYTES // max(1, source.row_bytes))
        self.lock = threading.Lock()
        self.kept: dict[int, np.ndarray] = {}  # part -> its bytes (rows, row_bytes), filled as rows are computed
        self.filled: dict[int, np.ndarray] = {}  # part -> bool per row
        self.served = [0] * len(row_bytes)  # bytes read so far per part; a part read in full is kept no longer
        self.whole: np.ndarray | None = None  # a source whose transforms need the whole tensor, read once

    def _source_rows(self, a: int, b: int) -> np.ndarray:
        src = self.source
        if not src.streams:
            with self.lock:
                if self.whole is None:
                    self.whole = src.read()
                whole = self.whole
            return whole[a:b]
        rb = src.row_bytes
        window = replace(src, stored=Window(src.stored, a * rb, (b - a) * rb), shape=(b - a,) + src.shape[1:],
                         stored_shape=(b - a,) + src.stored_shape[1:])
        return window.read()

    def _done(self, part: int) -> bool:
        return self.served[part] >= self.rows * self.row_bytes[part]

    def _rows(self, part: int, a: int, b: int) -> np.ndarray:
        with self.lock:
            kept = self.kept.get(part)
            if kept is not None and self.filled[part][a:b].all():
                return kept[a:b]
        out = np.empty((b - a, self.row_bytes[part]), dtype=np.uint8)
        for g in range(a, b, self.group):
            h = min(b, g + self.group)
            results = [np.ascontiguousarray(r).view(np.uint8).reshape(h - g, -1)
                       for r in self.compute(self._source_rows(g, h))]
            out[g - a:h - a] = results[part]
            with self.lock:
                for other, rows in enumerate(results):
                    if other == part or self._done(other):
                        continue
                    if other not in self.kept:
                        self.kept[other] = np.empty((self.rows, self.row_bytes[other]), dtype=np.uint8)
                        self.filled[other] = np.zeros(self.rows, dtype=bool)
                    self.kept[other][g:h] = rows
                    self.filled[other][g:h] = True
        return out

    def read(self, part: int, start: int = 0, stop: int | None = None) -> memoryview:
        rb = self.row_bytes[part]
        stop = self.rows * rb if stop is None else stop
        a, b = start // rb, -(-stop // rb)
        data = self._rows(part, a, b).reshape(-1)[start - a * rb:stop - a * rb]
        with self.lock:
            self.served[part] += stop - start
            if self._done(part):
                self.kept.pop(part, None)
                self.filled.pop(part, None)
            if self.whole is not None and all(self._done(p) for p in range(len(self.row_bytes))):
                self.whole = None
        return memoryview(data)


@dataclass(frozen=True)
class PartSlice:
    """One part's bytes, computed on demand: a stored slice for TensorRef (read(start, stop), nbytes)."""

    parts: Parts
    part: int

    @property
    def nbytes(self) -> int:
        return self.parts.rows * self.parts.row_bytes[self.part]

    def read(self, start: int = 0, stop: int | None = None) -> memoryview:
        return self.parts.read(self.part, start, stop)
