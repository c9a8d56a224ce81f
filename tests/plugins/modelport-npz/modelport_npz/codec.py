"""The `npz` format: a folder holding config.json, the HF tokenizer files and tensors.npz (numpy's uncompressed
zip of .npy arrays, HF names; bf16 travels as uint16 bits with its dtype in dtypes.json). Reads with
allow_pickle=False; every error is a modelport error naming the file, so the CLI's one-line messages and exit codes
hold for it as for modelport's own formats."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from modelport.convert import dtypes, inspect_view
from modelport.convert.codec import Codec, Option, SaveContext, Written
from modelport.formats.atomic import atomic_output
from modelport.formats.errors import BadInput
from modelport.formats.model import NUMPY_DTYPES, MemorySlice, Model

TENSORS, CONFIG, DTYPES = "tensors.npz", "config.json", "dtypes.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class NpzCodec(Codec):
    name = "npz"
    description = "toy plugin: a folder of config.json, tokenizer files and tensors.npz"
    options = (Option("dtype", "Float precision (default: the source's).", ("f32", "f16", "bf16")),)

    def detect(self, path: Path) -> int:
        return 10 if path.is_dir() and (path / TENSORS).is_file() else 0

    def open(self, path: Path) -> Model:
        try:
            config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
            kinds = json.loads((path / DTYPES).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise BadInput(path, f"npz model folder without {Path(e.filename).name}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadInput(path, f"not valid JSON: {e}") from None
        if not isinstance(config, dict) or not isinstance(kinds, dict):
            raise BadInput(path, "config.json and dtypes.json must be JSON objects")
        tensors = {}
        try:
            with np.load(path / TENSORS, allow_pickle=False) as npz:
                for name in npz.files:
                    arr = npz[name]
                    kind = kinds.get(name)
                    if kind not in NUMPY_DTYPES or np.dtype(NUMPY_DTYPES[kind]) != arr.dtype:
                        raise BadInput(path / TENSORS, f"tensor {name!r}: dtype {kind!r} does not match its "
                                                       f"array ({arr.dtype})")
                    tensors[name] = MemorySlice.tensor(arr, kind)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise BadInput(path / TENSORS, f"not a readable .npz: {e}") from None
        tokenizer = {n: (path / n).read_bytes() for n in TOKENIZER_FILES if (path / n).is_file()}
        return Model(config.get("model_type", ""), config, tensors, tokenizer,
                     metadata={"format": self.name, "source_files": [path / CONFIG, path / TENSORS]})

    def to_pivot(self, native: Model, path: Path) -> Model:
        return native

    def resolve(self, options: dict, dst: Path) -> dict:
        return {"dtype": dtypes.parse(options.get("dtype"))}

    def save(self, model: Model, options: dict, ctx: SaveContext) -> Written:
        """Whole arrays in memory: a toy, not a streaming writer."""
        out = dtypes.cast_model(model, options["dtype"])
        arrays = {n: r.read() for n, r in out.tensors.items()}
        with atomic_output(ctx.dst, ctx.force) as partial:
            partial.mkdir()
            (partial / CONFIG).write_text(json.dumps(out.config, indent=2, sort_keys=True), encoding="utf-8")
            (partial / DTYPES).write_text(json.dumps({n: r.result_dtype for n, r in out.tensors.items()},
                                                     sort_keys=True), encoding="utf-8")
            for name, content in out.tokenizer.items():
                (partial / name).write_bytes(content)
            np.savez(partial / TENSORS, **arrays)
        return Written(len(arrays), sum(a.nbytes for a in arrays.values()), options["dtype"])

    def inspect(self, native: Model, path: Path) -> dict:
        return inspect_view.view(self.name, native.arch, 2, list(native.tensors.items()),
                                 inspect_view.hf_tokenizer(native.tokenizer), {"config": native.config})


CODEC = NpzCodec()
