"""Hugging Face checkpoints: a model folder (config.json, single or sharded safetensors, tokenizer files) or a bare
`.safetensors` file. Headers are parsed and checked here, before any allocation, and tensor bytes are read lazily
with pread: the safetensors package cannot hand numpy a bf16 tensor, nor write a file tensor by tensor."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .atomic import WriteBehind
from .errors import BadInput
from .hashing import Late
from .model import NUMPY_DTYPES, FileSlice, Model, TensorRef

ITEMSIZE = {k: np.dtype(v).itemsize for k, v in NUMPY_DTYPES.items()}
MAX_HEADER = 100 << 20  # the reference implementation's own limit
INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "vocab.txt")
# a sentence-transformers folder's own files, besides each module's config.json (1_Pooling/config.json)
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
SHARD_BYTES = 5_000_000_000  # save_pretrained's default max_shard_size


def sniff(path: Path) -> bool:
    if path.is_dir():
        return (path / INDEX).exists() or any(path.glob("*.safetensors"))
    return path.suffix == ".safetensors"


def read_header(path: Path) -> tuple[dict[str, TensorRef], dict]:
    """Tensors and `__metadata__` of one .safetensors file, every size and offset checked against the file."""
    size = path.stat().st_size
    if size < 8:
        raise BadInput(path, f"truncated: {size} bytes, a safetensors file starts with an 8-byte header length")
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen > size - 8 or hlen > MAX_HEADER:
            raise BadInput(path, f"header length {hlen} is larger than the file ({size} bytes)")
        try:
            header = json.loads(f.read(hlen))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadInput(path, f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise BadInput(path, "header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    data_start, data_size = 8 + hlen, size - 8 - hlen
    tensors, spans = {}, []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise BadInput(path, f"tensor {name!r}: malformed entry {info!r}") from None
        if dtype not in ITEMSIZE:
            raise BadInput(path, f"tensor {name!r}: unknown dtype {dtype!r}")
        if any(d < 0 for d in shape) or not (isinstance(begin, int) and isinstance(end, int)) or begin < 0:
            raise BadInput(path, f"tensor {name!r}: bad shape or offsets")
        if end - begin != int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]:
            raise BadInput(path, f"tensor {name!r}: offsets {begin}..{end} do not match shape {list(shape)} {dtype}")
        if end > data_size:
            raise BadInput(path, f"tensor {name!r}: offsets {begin}..{end} run past the end of the file "
                                 f"(truncated? {data_size} data bytes)")
        spans.append((begin, end, name))
        tensors[name] = TensorRef.on_disk(FileSlice(path, data_start + begin, end - begin), shape, dtype)
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise BadInput(path, f"tensors {n0!r} and {n1!r} overlap (bytes {b1}..{e0})")
    return tensors, meta


def _load_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(path, f"not valid JSON: {e}") from None


def _relative(folder: Path, name: str) -> Path:
    """folder/name for a relative path that stays inside the folder (names come from modules.json or a GGUF)."""
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts:
        raise BadInput(folder, f"file name {name!r} leaves the model folder")
    return folder / rel


def sentence_transformers_files(folder: Path) -> dict[str, bytes]:
    """The sentence-transformers files of a folder (relative path -> bytes), {} for a plain HF folder."""
    modules = _load_json(folder / "modules.json")
    if modules is None:
        return {}
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise BadInput(folder / "modules.json", "expected a list of modules")
    names = list(SENTENCE_TRANSFORMERS_FILES)
    names += [f"{m['path']}/config.json" for m in modules if isinstance(m.get("path"), str) and m["path"]]
    paths = {n: _relative(folder, n) for n in names}
    return {n: path.read_bytes() for n, path in paths.items() if path.is_file()}


def shard_files(folder: Path) -> list[Path]:
    index = _load_json(folder / INDEX)
    if index is not None:
        try:
            names = sorted(set(index["weight_map"].values()))
        except (KeyError, AttributeError, TypeError):
            raise BadInput(folder / INDEX, "has no weight_map") from None
        files = [folder / n for n in names]
        for f in files:
            if f.parent != folder or not f.exists():
                raise BadInput(folder / INDEX, f"names a shard that is not in the folder: {f.name}")
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
        t, m = read_header(f)
        for name in t:
            if name in tensors:
                raise BadInput(f, f"tensor {name!r} is also in another shard")
        tensors.update(t)
        meta.update(m)
    tokenizer = {n: (path / n).read_bytes() for n in TOKENIZER_FILES if folder and (path / n).exists()}
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
        behind = WriteBehind(f)
        for _, ref in tensors:
            ref.write_to(f, progress, behind)
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
