"""Importance matrices from llama-imatrix, in either of its file formats, normalised exactly as llama-quantize
does (tools/quantize/quantize.cpp load_imatrix): GGUF files hold per-expert sums and counts (value = sum / count,
1 where the count is 0); legacy .dat files hold sums scaled by the call count (value = sum / ncall)."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelport.formats import gguf
from modelport.formats.errors import BadInput


@dataclass
class Imatrix:
    path: Path
    values: dict[str, np.ndarray]  # GGUF tensor name -> (n_expert * n_per_row,) f32
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0


def _from_gguf(path: Path) -> Imatrix:
    c = gguf.read(path)
    values = {}
    for name, ref in c.tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        if base + ".counts" not in c.tensors:
            raise BadInput(path, f"entry {base!r} has sums but no counts")
        sums = ref.read().astype(np.float32).reshape(-1)
        counts = c.tensors[base + ".counts"].read().astype(np.float32).reshape(-1)
        per = sums.reshape(len(counts), -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            values[base] = np.where(counts[:, None] > 0, per / counts[:, None], np.float32(1)).astype(np.float32)
        values[base] = values[base].reshape(-1)
    if not values:
        raise BadInput(path, "no importance-matrix entries (*.in_sum2) in this GGUF")
    return Imatrix(path, values, list(c.get("imatrix.datasets") or []), int(c.get("imatrix.chunk_count") or 0))


def _from_dat(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise BadInput(path, "truncated importance matrix")
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n_entries,) = take("<i")
    if n_entries < 1 or n_entries * 12 > len(data):
        raise BadInput(path, f"not an importance matrix ({n_entries} entries)")
    values = {}
    for _ in range(n_entries):
        (n,) = take("<i")
        name = bytes(take(f"<{n}s")[0]).decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise BadInput(path, f"entry {name!r} has {nval} values")
        sums = np.array(take(f"<{nval}f"), dtype=np.float32)
        values[name] = sums / np.float32(ncall) if ncall > 0 else sums
    chunks, datasets = 0, []
    if pos + 4 <= len(data):
        (chunks,) = take("<i")
        if pos + 4 <= len(data):
            (n,) = take("<i")
            if n > 0 and pos + n <= len(data):
                datasets.append(bytes(take(f"<{n}s")[0]).decode("utf-8", "replace"))
    return Imatrix(path, values, datasets, chunks)


def load(path: str | Path) -> Imatrix:
    path = Path(path)
    if not path.is_file():
        raise BadInput(path, "importance matrix not found")
    return _from_gguf(path) if gguf.sniff(path) else _from_dat(path)
