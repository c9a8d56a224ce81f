"""GGUF files through gguf-py: its reader for headers, metadata and tensor infos, its writer for the header; tensor
bytes are read with pread and written a row block at a time, so neither direction holds a whole model."""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from .errors import BadInput
from .hashing import Late
from .model import FileSlice, TensorRef
from .registry import Format

SPLIT = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
MIN_KV_BYTES = 8 + 4 + 4  # key length, value type, smallest value
MIN_TI_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


@dataclass
class GGUFContents:
    """A GGUF's native view: metadata key -> (value, type, array subtype), tensors by GGUF name."""

    kv: dict[str, tuple[Any, GGUFValueType, GGUFValueType | None]]
    tensors: dict[str, TensorRef]
    files: list[Path] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.kv[key][0] if key in self.kv else default


def sniff(path: Path) -> bool:
    if path.is_dir():
        return False
    with open(path, "rb") as f:
        return f.read(4) == struct.pack("<I", GGUF_MAGIC)


def _check_counts(path: Path) -> None:
    """Refuse absurd tensor and metadata counts before gguf-py sizes anything by them."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24:
        raise BadInput(path, f"truncated: {size} bytes is shorter than a GGUF header")
    magic, version, n_tensors, n_kv = struct.unpack("<IIQQ", head)
    if magic != GGUF_MAGIC:
        raise BadInput(path, "not a GGUF file (bad magic)")
    if version not in (2, 3):
        raise BadInput(path, f"GGUF version {version} is not supported (2 and 3 are)")
    if n_kv * MIN_KV_BYTES > size or n_tensors * MIN_TI_BYTES > size:
        raise BadInput(path, f"header claims {n_tensors} tensors and {n_kv} metadata keys, "
                             f"more than a file of {size} bytes can hold")


def _read_one(path: Path) -> GGUFContents:
    _check_counts(path)
    try:
        reader = GGUFReader(path)
    except Exception as e:  # gguf-py raises ValueError, struct.error, IndexError ... on malformed input
        raise BadInput(path, f"malformed GGUF: {e}") from None
    kv = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):
            continue  # the reader's own pseudo-fields (version, counts)
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        kv[name] = (f.contents(), f.types[0], sub)
    size, tensors, spans = path.stat().st_size, {}, []
    for t in reader.tensors:
        ggml_type = GGMLQuantizationType(t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        n_bytes = int(t.n_bytes)
        if t.data_offset + n_bytes > size:
            raise BadInput(path, f"tensor {t.name!r} runs past the end of the file (truncated?)")
        spans.append((t.data_offset, t.data_offset + n_bytes, t.name))
        block, _ = GGML_QUANT_SIZES[ggml_type]
        if shape and shape[-1] % block:
            raise BadInput(path, f"tensor {t.name!r}: row of {shape[-1]} is not a multiple of the "
                                 f"{ggml_type.name} block size {block}")
        stored_shape = shape if ggml_type.name in ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64") else \
            (int(np.prod(shape[:-1], dtype=np.int64)), n_bytes // max(1, int(np.prod(shape[:-1], dtype=np.int64))))
        tensors[t.name] = TensorRef(shape, ggml_type.name, FileSlice(path, t.data_offset, n_bytes), stored_shape)
    spans.sort()
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise BadInput(path, f"tensors {n0!r} and {n1!r} overlap")
    return GGUFContents(kv, tensors, [path])


def read(path: Path) -> GGUFContents:
    """One GGUF, or all parts of a split `name-00001-of-0000N.gguf`."""
    m = SPLIT.match(path.name)
    if not m:
        return _read_one(path)
    n = int(m["n"])
    parts = [path.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    for p in parts:
        if not p.exists():
            raise BadInput(path, f"split GGUF is missing its part {p.name}")
    first = _read_one(parts[0])
    for p in parts[1:]:
        more = _read_one(p)
        first.tensors.update(more.tensors)
        first.files.append(p)
    for k in SPLIT_KEYS:
        first.kv.pop(k, None)
    return first


def write(path: Path, arch: str, kv: list[tuple[str, Any, GGUFValueType, GGUFValueType | None]],
          tensors: list[tuple[str, TensorRef]], late: Late | None = None, progress=None) -> None:
    """Header through gguf-py's writer, then each tensor's row blocks, padded to the alignment. A `late` string
    value (source hashes still being computed) goes last among the keys as a same-length placeholder, so its
    bytes end where the metadata ends and can be patched in place once the data is written."""
    w = GGUFWriter(path, arch)
    for key, value, vtype, sub in kv:
        w.add_key_value(key, value, vtype, sub)
    if late:
        w.add_string(late.key, late.placeholder)
    for name, ref in tensors:
        w.add_tensor_info(name, ref.shape, np.dtype(np.float32), ref.nbytes,
                          raw_dtype=GGMLQuantizationType[ref.result_dtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    f = w.fout[0]
    kv_end = f.tell()
    w.write_ti_data_to_file()
    for name, ref in tensors:
        w.write_padding(f, f.tell())
        written = 0
        for chunk in ref.chunks():
            f.write(np.ascontiguousarray(chunk).data)
            written += chunk.nbytes
            if progress:
                progress(chunk.nbytes)
        w.write_padding(f, written)
    if late:
        value = late.value().encode()
        assert len(value) == len(late.placeholder.encode()), "a late value must keep its placeholder's length"
        f.seek(kv_end - len(value))
        f.write(value)
    w.close()


FORMAT = Format("gguf", (".gguf",), sniff, read, write, "GGUF for llama.cpp, Ollama, LM Studio (split files too)")
