"""GGUF files: gguf-py's writer and type tables, a fast checked header parser of our own; tensor bytes are read with
pread and written a row block at a time, so neither direction holds a whole model."""
from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType, GGUFWriter

from . import inputs
from .errors import BadInput
from .hashing import Late
from .model import NUMPY_DTYPES, FileSlice, TensorRef
from .sink import streaming

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
    inputs.check_file(path)
    with open(path, "rb") as f:
        return f.read(4) == struct.pack("<I", GGUF_MAGIC)


_SCALARS = {GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
            GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
            GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
            GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d"}
_NUMPY = {t: np.dtype(f) for t, f in _SCALARS.items()}
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME: llama.cpp refuses a tensor name of 64 bytes or more
INT64_MAX = (1 << 63) - 1
# keys llama.cpp reads with a typed getter that aborts on another type: the type each must have
TYPED_KEYS = {"general.alignment": GGUFValueType.UINT32, "general.architecture": GGUFValueType.STRING,
              "general.file_type": GGUFValueType.UINT32, "general.name": GGUFValueType.STRING,
              "tokenizer.ggml.model": GGUFValueType.STRING}
# the vocabulary arrays llama.cpp's vocab loader reads: element type each must have; all as long as the tokens
TOKEN_ARRAYS = {"tokenizer.ggml.tokens": GGUFValueType.STRING, "tokenizer.ggml.scores": GGUFValueType.FLOAT32,
                "tokenizer.ggml.token_type": GGUFValueType.INT32}
MERGES = "tokenizer.ggml.merges"  # an array of strings, of any length


class _Cursor:
    """Parses GGUF's header, metadata and tensor infos from a memory map, checking every length against the file
    before using it. Hand-written because gguf-py's GGUFReader builds a numpy view per string and takes ~20 s on
    a 128k-token vocabulary; the layout and type codes are gguf-py's."""

    def __init__(self, path: Path, buf: mmap.mmap):
        self.path, self.buf, self.pos = path, buf, 0

    def take(self, n: int, what: str) -> bytes:
        """A copy, never a view: a view alive in an error's traceback would keep the map from closing."""
        if n < 0 or self.pos + n > len(self.buf):
            raise BadInput(self.path, f"truncated or corrupt: {what} runs past the end of the file")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw

    def scalar(self, vtype: GGUFValueType, what: str):
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar(GGUFValueType.UINT64, what)
        raw = self.take(n, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise BadInput(self.path, f"{what} is not valid UTF-8") from None

    def vtype(self, what: str) -> GGUFValueType:
        code = self.scalar(GGUFValueType.UINT32, what)
        try:
            return GGUFValueType(code)
        except ValueError:
            raise BadInput(self.path, f"{what} has unknown value type {code}") from None

    def value(self, vtype: GGUFValueType, what: str):
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype != GGUFValueType.ARRAY:
            return self.scalar(vtype, what)
        sub = self.vtype(what)
        if sub == GGUFValueType.ARRAY:  # llama.cpp's gguf.cpp refuses arrays of arrays outright; so do we
            raise BadInput(self.path, f"{what} nests arrays, which llama.cpp does not read")
        count = self.scalar(GGUFValueType.UINT64, what)
        if sub in _NUMPY:
            raw = self.take(count * _NUMPY[sub].itemsize, what)
            if sub == GGUFValueType.BOOL and raw.strip(b"\0\1"):
                raise BadInput(self.path, f"{what} holds a bool that is neither 0 nor 1")
            return np.frombuffer(raw, dtype=_NUMPY[sub]).tolist()
        if count * 8 > len(self.buf) - self.pos:  # every string takes at least its 8-byte length
            raise BadInput(self.path, f"{what} claims {count} elements, more than the file can hold")
        return self.strings(count, what)  # the only element type left

    def strings(self, count: int, what: str) -> list[str]:
        """A string array (a vocabulary, its merges) in one tight loop: 128k tokens in a fraction of a second."""
        buf, pos, end, out = self.buf, self.pos, len(self.buf), []
        unpack = struct.Struct("<Q").unpack_from
        try:
            for _ in range(count):
                (n,) = unpack(buf, pos)
                if pos + 8 + n > end:
                    raise BadInput(self.path, f"truncated or corrupt: {what} runs past the end of the file")
                out.append(buf[pos + 8:pos + 8 + n].decode("utf-8"))
                pos += 8 + n
        except struct.error:
            raise BadInput(self.path, f"truncated or corrupt: {what} runs past the end of the file") from None
        except UnicodeDecodeError:
            raise BadInput(self.path, f"{what} is not valid UTF-8") from None
        self.pos = pos
        return out


def _check_types(path: Path, kv: dict) -> None:
    """The keys llama.cpp reads with typed getters have their types, and the vocabulary arrays agree in length."""
    for key, vtype in TYPED_KEYS.items():
        if key in kv and kv[key][1] != vtype:
            raise BadInput(path, f"metadata {key!r} must be {vtype.name}, not {kv[key][1].name}")
    for key, sub in {**TOKEN_ARRAYS, MERGES: GGUFValueType.STRING}.items():
        if key in kv and (kv[key][1], kv[key][2]) != (GGUFValueType.ARRAY, sub):
            raise BadInput(path, f"metadata {key!r} must be an array of {sub.name}")
    lengths = {k: len(kv[k][0]) for k in TOKEN_ARRAYS if k in kv}
    if len(set(lengths.values())) > 1:
        raise BadInput(path, "tokenizer arrays differ in length: " + ", ".join(f"{k} {n}" for k, n in lengths.items()))


def _check_dims(path: Path, name: str, dims: list[int], qtype: GGMLQuantizationType) -> None:
    """gguf.cpp's checks on a tensor's shape: each dimension fits int64, their product too, and the row is whole
    blocks of the type."""
    if any(d > INT64_MAX for d in dims):
        raise BadInput(path, f"tensor {name!r}: dimension over int64 in {dims}")
    n = 1
    for d in dims:
        n *= d
        if n > INT64_MAX:
            raise BadInput(path, f"tensor {name!r}: {dims} elements overflow int64")
    block = GGML_QUANT_SIZES[qtype][0]
    if dims[0] % block:
        raise BadInput(path, f"tensor {name!r}: row of {dims[0]} is not a multiple of the "
                             f"{qtype.name} block size {block}")


def _read_one(path: Path) -> GGUFContents:
    """One GGUF file, refused where llama.cpp's gguf.cpp refuses it (gguf_init_from_file_impl)."""
    size = inputs.check_file(path).st_size
    if size < 24:
        raise BadInput(path, f"truncated: {size} bytes is shorter than a GGUF header")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        c = _Cursor(path, buf)
        magic, version, n_tensors, n_kv = struct.unpack("<IIQQ", c.take(24, "header"))
        if magic != GGUF_MAGIC:
            raise BadInput(path, "not a GGUF file (bad magic)")
        if version not in (2, 3):
            raise BadInput(path, f"GGUF version {version} is not supported (2 and 3 are)")
        if n_kv * MIN_KV_BYTES > size or n_tensors * MIN_TI_BYTES > size:
            raise BadInput(path, f"header claims {n_tensors} tensors and {n_kv} metadata keys, "
                                 f"more than a file of {size} bytes can hold")
        kv = {}
        for _ in range(n_kv):
            key = c.string("a metadata key")
            if key in kv:
                raise BadInput(path, f"metadata key {key!r} appears twice")
            vtype = c.vtype(f"metadata {key!r}")
            start = c.pos
            value = c.value(vtype, f"metadata {key!r}")
            sub = GGUFValueType(struct.unpack_from("<I", buf, start)[0]) if vtype == GGUFValueType.ARRAY else None
            kv[key] = (value, vtype, sub)
        _check_types(path, kv)
        align = kv.get("general.alignment", (32,))[0]
        if align == 0 or align & (align - 1):
            raise BadInput(path, f"general.alignment {align} is not a power of two")
        infos = []
        for _ in range(n_tensors):
            name = c.string("a tensor name")
            if len(name.encode()) >= MAX_NAME:
                raise BadInput(path, f"tensor name {name[:80]!r} is {len(name.encode())} bytes; llama.cpp takes "
                                     f"at most {MAX_NAME - 1}")
            n_dims = c.scalar(GGUFValueType.UINT32, f"tensor {name!r}")
            if not 0 < n_dims <= MAX_DIMS:
                raise BadInput(path, f"tensor {name!r} has {n_dims} dimensions")
            dims = [c.scalar(GGUFValueType.UINT64, f"tensor {name!r}") for _ in range(n_dims)]
            code = c.scalar(GGUFValueType.UINT32, f"tensor {name!r}")
            offset = c.scalar(GGUFValueType.UINT64, f"tensor {name!r}")
            try:
                qtype = GGMLQuantizationType(code)
            except ValueError:
                raise BadInput(path, f"tensor {name!r} has unknown type {code}") from None
            if qtype not in GGML_QUANT_SIZES:
                raise BadInput(path, f"tensor {name!r} has type {qtype.name}, which has no block layout")
            _check_dims(path, name, dims, qtype)
            infos.append((name, tuple(reversed(dims)), qtype, offset))
        data_start = -(-c.pos // align) * align
    tensors, expected = {}, 0
    for name, shape, qtype, offset in infos:
        if name in tensors:
            raise BadInput(path, f"tensor {name!r} appears twice")
        block, type_size = GGML_QUANT_SIZES[qtype]
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        n_bytes = rows * (shape[-1] // block) * type_size
        begin = data_start + offset
        if begin + n_bytes > size:
            raise BadInput(path, f"tensor {name!r} runs past the end of the file (truncated?)")
        if offset != expected:  # gguf.cpp: tensors in order, each at the previous one's end padded to the alignment
            raise BadInput(path, f"tensor {name!r} is at data offset {offset}, expected {expected} (tensors must "
                                 f"follow each other, each aligned to {align} bytes)")
        expected += -(-n_bytes // align) * align
        stored_shape = shape if qtype.name in NUMPY_DTYPES else (rows, n_bytes // max(1, rows))
        tensors[name] = TensorRef(shape, qtype.name, FileSlice(path, begin, n_bytes), stored_shape)
    return GGUFContents(kv, tensors, [path])


def read(path: Path) -> GGUFContents:
    """One GGUF, or all parts of a split `name-00001-of-0000N.gguf`."""
    m = SPLIT.match(path.name)
    if not m:
        return _read_one(path)
    n = int(m["n"])
    if not 1 <= int(m["i"]) <= n:
        raise BadInput(path, f"split name says part {int(m['i'])} of {n}")
    parts = [path.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    for p in parts:
        if not os.path.lexists(p):
            raise BadInput(path, f"split GGUF is missing its part {p.name}")
    first = None
    for i, p in enumerate(parts):
        part = _read_one(p)
        _check_split_keys(p, part, i, n)
        if first is None:
            first = part
            continue
        for name in part.tensors:
            if name in first.tensors:
                raise BadInput(p, f"tensor {name!r} is also in an earlier part")
        first.tensors.update(part.tensors)
        first.files.append(p)
    for k in SPLIT_KEYS:
        first.kv.pop(k, None)
    return first


def _check_split_keys(path: Path, part: GGUFContents, index: int, count: int) -> None:
    """llama.cpp's split keys, where present, agree with the file name (split.no counts from 0)."""
    for key, want in (("split.no", index), ("split.count", count)):
        if key in part.kv and part.get(key) != want:
            raise BadInput(path, f"{key} is {part.get(key)!r}, the file name says {want}")


class _Writer(GGUFWriter):
    """gguf-py's writer, packing long arrays in one go: its generic path makes one call per element, about 3 s for
    a 128k-token vocabulary and its 280k merges. Same bytes (little-endian only, as we always write)."""

    def _pack_val(self, val: Any, vtype: GGUFValueType, add_vtype: bool, sub_type: GGUFValueType | None = None):
        if vtype != GGUFValueType.ARRAY or sub_type is None or len(val) == 0:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        head = (struct.pack("<I", vtype) if add_vtype else b"") + struct.pack("<IQ", sub_type, len(val))
        if sub_type == GGUFValueType.STRING:
            encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in val]
            lengths = np.fromiter(map(len, encoded), dtype="<u8", count=len(encoded)).tobytes()
            parts: list[bytes] = [b""] * (2 * len(encoded))
            parts[0::2] = [lengths[i:i + 8] for i in range(0, len(lengths), 8)]
            parts[1::2] = encoded
            return head + b"".join(parts)
        if sub_type in _NUMPY:
            return head + np.asarray(val, dtype=_NUMPY[sub_type].newbyteorder("<")).tobytes()
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def write(path: Path, arch: str, kv: list[tuple[str, Any, GGUFValueType, GGUFValueType | None]],
          tensors: list[tuple[str, TensorRef]], late: Late | None = None, progress=None) -> None:
    """Header through gguf-py's writer, then each tensor's row blocks, padded to the alignment. A `late` string
    value (source hashes still being computed) goes last among the keys as a same-length placeholder, so its
    bytes end where the metadata ends and can be patched in place once the data is written."""
    w = _Writer(path, arch)
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
    with streaming(f) as out:
        for name, ref in tensors:
            w.write_padding(out, out.tell())
            w.write_padding(out, ref.write_to(out, progress))
    if late:
        value = late.value().encode()
        assert len(value) == len(late.placeholder.encode()), "a late value must keep its placeholder's length"
        f.seek(kv_end - len(value))
        f.write(value)
    w.close()
