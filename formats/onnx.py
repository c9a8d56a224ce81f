"""ONNX models: a `.onnx` file (weights inline or in external-data files beside it) or a folder holding `model.onnx`.

Reading gives the native view: the graph without its weights, and every initializer as a lazy TensorRef. External
data must stay inside the model's folder: a location that is absolute, climbs out with `..` or runs past its file's
end is refused before anything is read.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import inputs
from .atomic import atomic_output
from .errors import BadInput, OutputExists, RuntimeMissing
from .hashing import Late
from .model import FileSlice, MemorySlice, TensorRef
from .sink import streaming

MODEL_FILE = "model.onnx"
DATA_FILE = MODEL_FILE + ".data"

# ONNX TensorProto.DataType -> our dtype names (numpy has no bfloat16: it travels as uint16 bits)
ONNX_DTYPES = {1: "F32", 2: "U8", 3: "I8", 5: "I16", 6: "I32", 7: "I64", 9: "BOOL", 10: "F16", 11: "F64", 16: "BF16",
               21: "U4", 22: "I4"}
DTYPES_ONNX = {v: k for k, v in ONNX_DTYPES.items()}


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise RuntimeMissing(None, "ONNX needs the onnx package: pip install 'modelport[onnx]'") from None
    return onnx


@dataclass
class OnnxContents:
    """The graph (initializers without their bytes) and each initializer as a lazy reference."""

    path: Path  # the .onnx file
    proto: object  # onnx.ModelProto, weights not loaded
    tensors: dict[str, TensorRef]
    files: list[Path] = field(default_factory=list)  # the .onnx and its external-data files

    @property
    def metadata(self) -> dict[str, str]:
        return {p.key: p.value for p in self.proto.metadata_props}


def model_file(path: Path) -> Path:
    return path / MODEL_FILE if path.is_dir() else path


def sniff(path: Path) -> bool:
    return model_file(path).suffix == ".onnx" and model_file(path).is_file()


def _external(path: Path, tensor, nbytes: int) -> FileSlice:
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if "\0" in location:
        raise BadInput(path, f"initializer {tensor.name!r}: external data location {location!r} holds a NUL byte")
    folder = path.parent.resolve()
    target = (folder / location).resolve()
    climbs = ".." in Path(location.replace("\\", "/")).parts
    if not location or os.path.isabs(location) or climbs or folder not in target.parents:
        raise BadInput(path, f"initializer {tensor.name!r}: external data location {location!r} is outside the "
                             "model's folder")
    if not os.path.lexists(target):
        raise BadInput(path, f"initializer {tensor.name!r}: external data file {location!r} is missing")
    inputs.check_file(target, folder)
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", nbytes))
    except ValueError:
        raise BadInput(path, f"initializer {tensor.name!r}: external data offset/length are not numbers") from None
    if length != nbytes or offset < 0 or offset + length > target.stat().st_size:
        raise BadInput(path, f"initializer {tensor.name!r}: bytes {offset}..{offset + length} of {location!r} do "
                             f"not hold its {nbytes} bytes (truncated?)")
    return FileSlice(target, offset, length)


def _ref(path: Path, tensor) -> TensorRef:
    onnx = require_onnx()
    if tensor.data_type not in ONNX_DTYPES:
        raise BadInput(path, f"initializer {tensor.name!r}: element type {tensor.data_type} is not one modelport "
                             "reads")
    dtype, shape = ONNX_DTYPES[tensor.data_type], tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in shape):
        raise BadInput(path, f"initializer {tensor.name!r}: negative dimension in {list(shape)}")
    if math.prod(shape) * 8 >= 1 << 63:  # before numpy multiplies them, which wraps silently
        raise BadInput(path, f"initializer {tensor.name!r}: shape {list(shape)} overflows a 64-bit size")
    nbytes = TensorRef.on_disk(MemorySlice(b""), shape, dtype).nbytes  # what its shape and type take (4-bit packed)
    if nbytes >= 1 << 63:
        raise BadInput(path, f"initializer {tensor.name!r}: shape {list(shape)} overflows a 64-bit size")
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return TensorRef.on_disk(_external(path, tensor, nbytes), shape, dtype)
    if tensor.raw_data:
        if len(tensor.raw_data) != nbytes:
            raise BadInput(path, f"initializer {tensor.name!r}: {len(tensor.raw_data)} bytes for shape {list(shape)}")
        return TensorRef.on_disk(MemorySlice(bytes(tensor.raw_data)), shape, dtype)
    try:
        arr = onnx.numpy_helper.to_array(tensor)  # typed fields (float_data ...): small tensors only
    except ValueError as e:  # a count of values that disagrees with the dims
        raise BadInput(path, f"initializer {tensor.name!r}: {e}"[:300]) from None
    if dtype in ("I4", "U4"):  # one value per element: packed two to a byte, as raw data holds them
        values = arr.reshape(-1).astype(np.int8).view(np.uint8) & np.uint8(0x0F)
        values = np.append(values, np.zeros(values.size % 2, np.uint8))
        return TensorRef.on_disk(MemorySlice((values[0::2] | (values[1::2] << np.uint8(4))).tobytes()), shape, dtype)
    if dtype == "BF16":
        arr = arr.view(np.uint16)
    return TensorRef.on_disk(MemorySlice(np.ascontiguousarray(arr).tobytes()), shape, dtype)


def _check_strings(path: Path, proto) -> None:
    """protobuf hands over a string field that is not UTF-8 as bytes; every name the readers use must be text."""
    g = proto.graph
    names = [t.name for t in g.initializer] + [p.key for p in proto.metadata_props] + \
        [p.value for p in proto.metadata_props] + [v.name for v in (*g.input, *g.output)] + \
        [s for n in g.node for s in (n.op_type, n.domain, *n.input, *n.output)] + \
        [e.value for t in g.initializer for e in t.external_data]
    if not all(isinstance(n, str) for n in names):
        raise BadInput(path, "a name or metadata value in the graph is not valid UTF-8")


def read(path: Path) -> OnnxContents:
    """The graph and lazy initializers of an ONNX model; headers only, no weight is read here."""
    onnx = require_onnx()
    folder = path if path.is_dir() else None
    path = model_file(path)
    inputs.check_file(path, folder)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise BadInput(path, f"not a valid ONNX model: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    _check_strings(path, proto)
    tensors = {t.name: _ref(path, t) for t in proto.graph.initializer}
    files = [path] + sorted({r.stored.path for r in tensors.values() if isinstance(r.stored, FileSlice)})
    return OnnxContents(path, proto, tensors, files)


ALIGN, ALIGN_ABOVE = 4096, 1 << 20  # onnx-ir's alignment when enabled: pages, for tensors above 1 MiB only


def _aligned(offset: int, nbytes: int) -> int:
    return -(-offset // ALIGN) * ALIGN if nbytes > ALIGN_ABOVE else offset


def _initializer(name: str, ref: TensorRef, location: str, offset: int):
    onnx = require_onnx()
    t = onnx.TensorProto(name=name, dims=list(ref.shape), data_type=DTYPES_ONNX[ref.result_dtype],
                         data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(ref.nbytes))):
        t.external_data.add(key=key, value=value)
    return t


def write(model_path: Path, data_path: Path, location: str, proto, tensors: list[tuple[str, TensorRef]],
          meta: dict[str, str], late: Late | None = None, progress=None) -> None:
    """`proto` (a graph whose initializers are not attached) with `tensors` streamed into one external-data file.

    Offsets are computed before any byte is written; each tensor is streamed row block by row block (or copied in
    the kernel when unchanged), so memory holds one row block, never a tensor set. The proto is written last, when
    the data is on disk and a `late` value (source hashes) is known, so it carries the real value."""
    onnx = require_onnx()
    offsets, end = [], 0
    for _, ref in tensors:
        start = _aligned(end, ref.nbytes)
        offsets.append(start)
        end = start + ref.nbytes
    with open(data_path, "wb") as f, streaming(f) as out:
        for (name, ref), offset in zip(tensors, offsets):
            out.write(b"\0" * (offset - out.tell()))
            if ref.write_to(out, progress) != ref.nbytes:
                raise AssertionError(f"{name}: wrote a different byte count than its shape and dtype give")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.graph.initializer.extend(_initializer(n, r, location, o) for (n, r), o in zip(tensors, offsets))
    del out.metadata_props[:]
    for key, value in sorted({**meta, **({late.key: late.value()} if late else {})}.items()):
        out.metadata_props.add(key=key, value=value)
    model_path.write_bytes(out.SerializeToString(deterministic=True))


def place(dst: Path, force: bool, write_files: Callable[[Path, Path, str], None],
          folder_files: Callable[[], dict[str, bytes]] = dict) -> None:
    """Put an ONNX model at DST atomically. `write_files(model path, data path, data location)` writes the pair.
    DST a folder: model.onnx, model.onnx.data and `folder_files()` (genai_config.json, tokenizer ...) in it, renamed
    into place together. DST `x.onnx`: `x.onnx` and `x.onnx.data` beside it; the model is put in place last and taken
    back out if the data cannot follow, so both appear or neither."""
    if dst.suffix != ".onnx":
        with atomic_output(dst, force) as partial:
            partial.mkdir()
            write_files(partial / MODEL_FILE, partial / DATA_FILE, DATA_FILE)
            for name, content in sorted(folder_files().items()):
                (partial / name).write_bytes(content)
        return
    data = dst.with_name(dst.name + ".data")
    if dst.exists() and not force:  # named first: the data file beside it is the second thing checked
        raise OutputExists(dst, "exists; pass --force to overwrite")
    model_done = False
    try:
        with atomic_output(data, force) as partial_data:
            with atomic_output(dst, force) as partial:
                write_files(partial, partial_data, data.name)
            model_done = True
    except BaseException:
        if model_done:
            dst.unlink(missing_ok=True)
        raise
