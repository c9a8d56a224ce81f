"""The pivot: a `Model` of lazily read `TensorRef`s, with the Hugging Face config and tokenizer files as canonical.

Readers give references whose bytes stay on disk until a writer asks for them, a row block at a time, so that
peak memory is bounded by a row chunk of the largest tensor, never by the model.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

if TYPE_CHECKING:
    from .sink import BufferedSink, DirectSink

    Sink = BufferedSink | DirectSink

# Numpy has no bfloat16 or float8: BF16 and F8_E4M3 tensors travel as their bit patterns.
NUMPY_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F8_E4M3": np.uint8,
                "I64": np.int64, "I32": np.int32, "U32": np.uint32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                "BOOL": np.bool_}
# 4-bit integers (ONNX INT4 / UINT4) are stored packed, two to a byte in row-major order, low nibble first: the
# bytes travel as uint8, half as many as elements (rounded up)
PACKED_DTYPES = {"I4": 2, "U4": 2}  # dtype -> elements per byte

CHUNK_BYTES = 4 << 20  # row blocks of about 4 MiB: cache-friendly, and few page faults per block
PREFETCH = 2 * (os.cpu_count() or 1)  # row blocks read and transformed ahead of the writer


@cache
def _workers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="modelport-rows")


def _ordered(fn: Callable[[int], np.ndarray], items: range) -> Iterator[np.ndarray]:
    """fn over items on the worker threads, at most PREFETCH ahead, results in order. pread, numpy casts and ggml
    release the GIL, so reading and transforming overlap with each other and with the caller's writes."""
    pending: deque = deque()
    it = iter(items)
    for item in it:
        pending.append(_workers().submit(fn, item))
        if len(pending) >= PREFETCH:
            break
    while pending:
        yield pending.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(_workers().submit(fn, nxt))


@dataclass(frozen=True)
class FileSlice:
    """`nbytes` bytes at `offset` of `path`, read with pread (no mmap, so nothing stays resident)."""

    path: Path
    offset: int
    nbytes: int

    def read(self, start: int = 0, stop: int | None = None) -> bytearray:
        stop = self.nbytes if stop is None else stop
        buf = bytearray(stop - start)
        with open(self.path, "rb", buffering=0) as f:
            view, pos = memoryview(buf), self.offset + start
            while view:
                n = os.preadv(f.fileno(), [view], pos)
                if n == 0:
                    raise EOFError(f"{self.path}: unexpected end of file at byte {pos}")
                view, pos = view[n:], pos + n
        return buf


@dataclass(frozen=True)
class MemorySlice:
    """Bytes already in memory: tensors a converter makes (llama.cpp's rope_freqs) rather than reads."""

    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def read(self, start: int = 0, stop: int | None = None) -> bytes:
        return self.data[start:stop]

    @classmethod
    def tensor(cls, arr: np.ndarray, dtype: str) -> "TensorRef":
        return TensorRef.on_disk(cls(np.ascontiguousarray(arr).tobytes()), arr.shape, dtype)


@dataclass(frozen=True)
class ConcatSlice:
    """Several stored slices read as one, in order: the separate tensors of a layer's MoE experts as GGUF's one
    stacked tensor, whose row blocks are read from each expert's own file, never from a stacked copy."""

    parts: tuple[FileSlice | MemorySlice, ...]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def read(self, start: int = 0, stop: int | None = None) -> bytearray:
        stop = self.nbytes if stop is None else stop
        out, pos = bytearray(), 0
        for part in self.parts:
            lo, hi = max(start - pos, 0), min(stop - pos, part.nbytes)
            if lo < hi:
                out += part.read(lo, hi)
            pos += part.nbytes
        return out


Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TensorRef:
    """A tensor that is read when asked for.

    `shape` is the logical (numpy, row-major) shape; `dtype` a name from NUMPY_DTYPES or a GGML block type
    ("Q4_K", ...) whose `stored` bytes are whole rows of blocks. `transforms` apply in order to whole tensors
    (Q/K permutations and the like); `rowwise` ones (casts) also apply to row blocks, so reading can stream.
    """

    shape: tuple[int, ...]
    dtype: str
    stored: FileSlice | MemorySlice | ConcatSlice
    stored_shape: tuple[int, ...]  # numpy shape of the stored data (rows = stored_shape[0])
    transforms: tuple[tuple[Transform, bool], ...] = ()
    out_dtype: str | None = None  # dtype after the transforms, when they change it

    @classmethod
    def on_disk(cls, stored: FileSlice | MemorySlice, shape: tuple[int, ...], dtype: str) -> "TensorRef":
        return cls(tuple(shape), dtype, stored, tuple(shape))

    @property
    def row_bytes(self) -> int:
        rows = self.stored_shape[0] if self.stored_shape else 1
        return self.stored.nbytes // max(1, rows)

    @property
    def result_dtype(self) -> str:
        return self.out_dtype or self.dtype

    @property
    def n_rows(self) -> int:
        return self.stored_shape[0] if self.stored_shape else 1

    @property
    def result_rows(self) -> int:
        """Rows of the result as chunks() yields them: the stored rows when every transform is row-wise, else the
        result's first dimension (a whole-tensor transform, a transpose, may change the count)."""
        return self.n_rows if self.streams else self.shape[0]

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the result: elements x item size for plain dtypes, the stored blocks for quantized ones."""
        if self.result_dtype in NUMPY_DTYPES:
            return self.n_elements * np.dtype(NUMPY_DTYPES[self.result_dtype]).itemsize
        if self.result_dtype in PACKED_DTYPES:
            return -(-self.n_elements // PACKED_DTYPES[self.result_dtype])
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[self.result_dtype]]
        return self.n_elements // block * size

    @property
    def streams(self) -> bool:
        return all(rowwise for _, rowwise in self.transforms)

    def _decode(self, raw: bytearray, rows: int) -> np.ndarray:
        if not self.stored_shape:
            return np.frombuffer(raw, dtype=NUMPY_DTYPES[self.dtype]).reshape(())
        if self.dtype in NUMPY_DTYPES:
            return np.frombuffer(raw, dtype=NUMPY_DTYPES[self.dtype]).reshape((rows,) + self.stored_shape[1:])
        return np.frombuffer(raw, dtype=np.uint8).reshape(rows, -1)  # quantized blocks or packed 4-bit, by rows

    def _apply(self, arr: np.ndarray, only_rowwise_allowed: bool) -> np.ndarray:
        for fn, rowwise in self.transforms:
            assert rowwise or not only_rowwise_allowed
            arr = fn(arr)
        return arr

    def read(self) -> np.ndarray:
        """The whole tensor, transforms applied."""
        return self._apply(self._decode(self.stored.read(), self.n_rows), False)

    def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """Row blocks of about `chunk_bytes` (the whole tensor when a transform needs all of it)."""
        if not self.streams or not self.stored_shape:
            yield self.read()
            return
        rows_per = max(1, chunk_bytes // max(1, self.row_bytes))

        def block(r: int) -> np.ndarray:
            n = min(rows_per, self.n_rows - r)
            raw = self.stored.read(r * self.row_bytes, (r + n) * self.row_bytes)
            return self._apply(self._decode(raw, n), True)

        yield from _ordered(block, range(0, self.n_rows, rows_per))

    def write_to(self, out: "Sink", progress: Callable[[int], None] | None = None) -> int:
        """Stream the result into `out` (formats.sink); bytes that pass through unchanged are copied from their
        files as they are (stacked experts part by part), everything else goes a row block at a time. Returns the
        bytes written."""
        files = self.stored.parts if isinstance(self.stored, ConcatSlice) else (self.stored,)
        if not self.transforms and all(isinstance(s, FileSlice) for s in files):
            return sum(out.copy(s, progress) for s in files)
        written = 0
        for chunk in self.chunks():
            out.write(np.ascontiguousarray(chunk).data)
            written += chunk.nbytes
            if progress:
                progress(chunk.nbytes)
        return written

    def map(self, fn: Transform, rowwise: bool = False, shape: tuple[int, ...] | None = None,
            dtype: str | None = None) -> "TensorRef":
        """A new reference with `fn` composed lazily after the existing transforms."""
        return replace(self, transforms=self.transforms + ((fn, rowwise),),
                       shape=tuple(shape) if shape is not None else self.shape,
                       out_dtype=dtype or self.out_dtype)

    @classmethod
    def stack(cls, refs: list["TensorRef"]) -> "TensorRef":
        """Untransformed tensors of one shape and dtype as one with a new leading axis (torch.stack), lazily: its
        stored rows are the parts' rows in order (so `read()` gives them 2-D), and it streams in row blocks."""
        first = refs[0]
        if any(r.transforms or (r.dtype, r.shape, r.stored_shape) != (first.dtype, first.shape, first.stored_shape)
               for r in refs):
            raise ValueError("only untransformed tensors of one shape and dtype stack")
        rows = first.stored_shape
        stored_shape = (len(refs) * rows[0],) + rows[1:] if len(rows) > 1 else (len(refs),) + rows
        return cls((len(refs),) + first.shape, first.dtype, ConcatSlice(tuple(r.stored for r in refs)), stored_shape)

    def unstack(self) -> list["TensorRef"]:
        """The inverse of `stack`: one reference per index of the leading axis, each a byte range of the stored
        data (quantized block rows split the same way); parts of a file stay file slices, read straight from it."""
        if self.transforms or len(self.shape) < 2:
            raise ValueError("only an untransformed tensor of two or more dimensions unstacks")
        n, shape = self.shape[0], self.shape[1:]
        size, rows = self.stored.nbytes // n, int(np.prod(shape[:-1], dtype=np.int64))
        stored_shape = shape if self.dtype in NUMPY_DTYPES else (rows, size // max(1, rows))

        def part(i: int) -> FileSlice | MemorySlice:
            if isinstance(self.stored, FileSlice):
                return replace(self.stored, offset=self.stored.offset + i * size, nbytes=size)
            return MemorySlice(bytes(self.stored.read(i * size, (i + 1) * size)))

        return [TensorRef(shape, self.dtype, part(i), stored_shape) for i in range(n)]


@dataclass
class Model:
    """The pivot: HF architecture name and config.json dict, HF-named tensors, HF tokenizer files, metadata."""

    arch: str
    config: dict
    tensors: dict[str, TensorRef]
    tokenizer: dict[str, bytes] = field(default_factory=dict)  # HF tokenizer files: name -> content
    generation_config: dict | None = None
    metadata: dict = field(default_factory=dict)  # name, license, provenance ...
