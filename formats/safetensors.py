"""Hugging Face checkpoints: a model folder (config.json, single or sharded safetensors, tokenizer files) or a bare
`.safetensors` file. Headers are parsed and checked here, before any allocation, and tensor bytes are read lazily
with pread: the safetensors package cannot hand numpy a bf16 tensor, nor write a file tensor by tensor."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from . import inputs, jsonfile
from .errors import BadInput, Unsupported
from .hashing import Late
from .model import NUMPY_DTYPES, FileSlice, Model, TensorRef
from .sink import streaming

ITEMSIZE = {k: np.dtype(v).itemsize for k, v in NUMPY_DTYPES.items()}
MAX_HEADER = 100_000_000  # the safetensors library's MAX_HEADER_SIZE
# every dtype the safetensors library knows (its Dtype enum); ITEMSIZE holds those modelport converts
LIBRARY_DTYPES = ("BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16",
                  "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64")
INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "vocab.txt")
# a sentence-transformers folder's own files, besides each module's config.json (1_Pooling/config.json)
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
SHARD_BYTES = 5_000_000_000  # save_pretrained's default max_shard_size


def sniff(path: Path) -> bool:
    if path.is_dir():
        return os.path.lexists(path / INDEX) or any(path.glob("*.safetensors"))
    return path.suffix == ".safetensors"


def _usize(value, what: str, path: Path) -> int:
    """A JSON integer in Rust's usize (u64) range, as serde reads `shape` and `data_offsets`: no floats, no bools."""
    if type(value) is not int or not 0 <= value < 1 << 64:
        raise BadInput(path, f"{what}: expected a non-negative integer, got {value!r}"[:200])
    return value


def _entry(name: str, info, path: Path) -> tuple[str, tuple[int, ...], int, int]:
    """One tensor entry as the safetensors library's TensorInfo takes it: exactly dtype, shape, data_offsets."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise BadInput(path, f"tensor {name!r}: expected dtype, shape and data_offsets, got {info!r}"[:200])
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in LIBRARY_DTYPES:
        raise BadInput(path, f"tensor {name!r}: unknown dtype {dtype!r}"[:200])
    if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        raise BadInput(path, f"tensor {name!r}: shape must be a list and data_offsets a pair")
    dims = tuple(_usize(d, f"tensor {name!r}: shape", path) for d in shape)
    begin, end = (_usize(o, f"tensor {name!r}: data_offsets", path) for o in offsets)
    if dtype not in ITEMSIZE:
        raise Unsupported(path, f"tensor {name!r}: dtype {dtype} is not one modelport converts "
                                f"({', '.join(ITEMSIZE)})")
    return dtype, dims, begin, end


def read_header(path: Path, root: Path | None = None) -> tuple[dict[str, TensorRef], dict]:
    """Tensors and `__metadata__` of one .safetensors file, checked by the safetensors library's own rules
    (safetensors/src/tensor.rs read_metadata and Metadata::validate) before anything is allocated: header at most
    100,000,000 bytes of UTF-8 JSON, metadata a str -> str map, integer shapes whose byte size fits in u64,
    tensors packed back to back from offset 0 with no gap or overlap, and no bytes after the last one."""
    size = inputs.check_file(path, root).st_size
    if size < 8:
        raise BadInput(path, f"truncated: {size} bytes, a safetensors file starts with an 8-byte header length")
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen > MAX_HEADER:
            raise BadInput(path, f"header length {hlen} is over the safetensors limit of {MAX_HEADER} bytes")
        if hlen > size - 8:
            raise BadInput(path, f"header length {hlen} is larger than the file ({size} bytes)")
        raw = f.read(hlen)
    header = jsonfile.loads(raw, path, "header")
    if not isinstance(header, dict):
        raise BadInput(path, "header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BadInput(path, "__metadata__ must map strings to strings")
    entries = {name: _entry(name, info, path) for name, info in header.items()}
    data_start, data_size = 8 + hlen, size - 8 - hlen
    tensors, expected = {}, 0
    for name, (dtype, shape, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3], e[0])):
        n = 1
        for d in shape:
            n *= d
        n_bytes = n * ITEMSIZE[dtype]
        if n_bytes >= 1 << 64:
            raise BadInput(path, f"tensor {name!r}: shape {list(shape)} overflows a 64-bit size")
        if max(begin, end) > data_size:
            raise BadInput(path, f"tensor {name!r}: offsets {begin}..{end} run past the end of the file "
                                 f"(truncated? {data_size} data bytes)")
        if begin != expected:
            what = "overlaps the tensor before it" if begin < expected else f"leaves a gap after byte {expected}"
            raise BadInput(path, f"tensor {name!r}: data_offsets {begin}..{end} {what}")
        if end - begin != n_bytes:
            raise BadInput(path, f"tensor {name!r}: offsets {begin}..{end} do not match shape {list(shape)} {dtype}")
        expected = end
        tensors[name] = TensorRef.on_disk(FileSlice(path, data_start + begin, end - begin), shape, dtype)
    if expected != data_size:
        raise BadInput(path, f"{data_size - expected} bytes after the last tensor (the header accounts for "
                             f"{expected} of {data_size} data bytes)")
    return {name: tensors[name] for name in header}, meta


def _load_json(path: Path, kind: type = dict) -> dict | list | None:
    """A side file of the model folder (None if absent), a checked file inside the folder."""
    if not os.path.lexists(path):
        return None
    return jsonfile.load(path, path.parent, kind)


def _relative(folder: Path, name: str) -> Path:
    """folder/name for a relative path that stays inside the folder (names come from modules.json or a GGUF)."""
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts:
        raise BadInput(folder, f"file name {name!r} leaves the model folder")
    return folder / rel


def sentence_transformers_files(folder: Path) -> dict[str, bytes]:
    """The sentence-transformers files of a folder (relative path -> bytes), {} for a plain HF folder."""
    modules = _load_json(folder / "modules.json", list)
    if modules is None:
        return {}
    if not all(isinstance(m, dict) for m in modules):
        raise BadInput(folder / "modules.json", "expected a list of modules")
    names = list(SENTENCE_TRANSFORMERS_FILES)
    names += [f"{m['path']}/config.json" for m in modules if isinstance(m.get("path"), str) and m["path"]]
    for n in names:
        _relative(folder, n)
    return inputs.side_files(folder, names)


def shard_files(folder: Path) -> list[Path]:
    index = _load_json(folder / INDEX)
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise BadInput(folder / INDEX, "weight_map must map tensor names to shard file names")
        files = [folder / n for n in sorted(set(weight_map.values()))]
        for f in files:
            if f.parent != folder or not os.path.lexists(f):
                raise BadInput(folder / INDEX, f"names a shard that is not in the folder: {f.name}"[:300])
            inputs.check_file(f, folder)
        return files
    return sorted(folder.glob("*.safetensors"))


def read(path: Path) -> Model:
    """A model folder or a bare .safetensors file, as the pivot (HF names are the canonical names)."""
    folder = path if path.is_dir() else None
    files = shard_files(path) if folder else [path]
    config = _load_json(path / "config.json") if folder else None
    if folder and (not files or config is None):
        raise BadInput(path, "no model here: expected config.json and model*.safetensors")
    tensors, meta = {}, {}
    for f in files:
        t, m = read_header(f, folder)
        for name in t:
            if name in tensors:
                raise BadInput(f, f"tensor {name!r} is also in another shard")
        tensors.update(t)
        meta.update(m)
    tokenizer = inputs.side_files(path, TOKENIZER_FILES) if folder else {}
    config = config or {}
    return Model(arch=config.get("model_type", ""), config=config, tensors=tensors, tokenizer=tokenizer,
                 generation_config=_load_json(path / "generation_config.json") if folder else None,
                 metadata={"format": "safetensors", "source_files": files, "safetensors_metadata": meta,
                           "hf_folder": folder,  # the HF folder itself, for tools that read one (optimum)
                           "sentence_transformers": sentence_transformers_files(path) if folder else {}})


def _header(tensors: list[tuple[str, TensorRef]], meta: dict[str, str]) -> bytes:
    header, off = {"__metadata__": meta}, 0
    for name, ref in tensors:
        n = ref.nbytes
        header[name] = {"dtype": ref.result_dtype, "shape": list(ref.shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return hb + b" " * (-len(hb) % 8)


def write_file(path: Path, tensors: list[tuple[str, TensorRef]], meta: dict[str, str], late: Late | None = None,
               progress=None) -> None:
    """One .safetensors file, tensor by tensor, row block by row block; a `late` metadata value (source hashes
    still being computed) is written as a same-length placeholder and patched in at the end."""
    hb = _header(tensors, {**meta, late.key: late.placeholder} if late else meta)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        with streaming(f) as out:
            for _, ref in tensors:
                ref.write_to(out, progress)
        if late:
            final = _header(tensors, {**meta, late.key: late.value()})
            assert len(final) == len(hb), "a late value must keep its placeholder's length"
            f.seek(8)
            f.write(final)


def _shards(tensors: list[tuple[str, TensorRef]], shard_bytes: int) -> list[list[tuple[str, TensorRef]]]:
    shards, cur, size = [], [], 0
    for name, ref in tensors:
        n = ref.nbytes
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, ref))
        size += n
    return shards + [cur]


def _dump(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(dst: Path, model: Model, meta: dict[str, str], late: Late | None = None, bare: bool = False,
          shard_bytes: int = SHARD_BYTES, progress=None, index: bool = False) -> None:
    """A model folder like save_pretrained writes (sharded with an index past `shard_bytes`, or always with
    `index`), or a `bare` file."""
    meta = {"format": "pt", **meta}  # as save_pretrained writes: transformers refuses files without it
    items = list(model.tensors.items())
    if bare:
        write_file(dst, items, meta, late, progress)
        return
    dst.mkdir()
    (dst / "config.json").write_text(_dump(model.config), encoding="utf-8")
    if model.generation_config:
        (dst / "generation_config.json").write_text(_dump(model.generation_config), encoding="utf-8")
    for name, content in sorted(model.tokenizer.items()):
        (dst / name).write_bytes(content)
    for name, content in sorted(model.metadata.get("sentence_transformers", {}).items()):
        target = _relative(dst, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    shards = _shards(items, shard_bytes)
    if len(shards) == 1 and not index:
        write_file(dst / "model.safetensors", items, meta, late, progress)
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors"
        write_file(dst / fname, shard, meta, late, progress)
        for name, ref in shard:
            weight_map[name] = fname
            total += ref.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dst / INDEX).write_text(_dump(index), encoding="utf-8")
