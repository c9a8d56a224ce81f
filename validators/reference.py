"""Saved references (`.mpref`): the reference side's texts, token ids, identity and logits in one file, so the
candidate runs after the reference is freed (sides in turn: peak memory is one side, not both) and any number of
candidates can be checked later without the original model.

The file is a zip without compression: `reference.json` (schema, texts, token ids, the reference's Side, its source
sha256s, the compute dtype) and one float32 `.npy` of logits per text, exactly as the reference runtime returned
them, so every figure computed against the file equals the in-memory path's. Written through formats.atomic (or
into a temporary folder for a single run), one text at a time; read with json and numpy's `allow_pickle=False`,
zip CRCs checked, every array's dtype and shape checked against the JSON. Not a model format: no codec, only
`validate` reads it."""
from __future__ import annotations

import json
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from modelport.formats.atomic import atomic_output
from modelport.formats.errors import BadInput

SCHEMA = "modelport.reference/1"
SUFFIX = ".mpref"
META = "reference.json"
MAX_META_BYTES = 256 << 20  # texts and ids of any sensible run fit many times over
HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def is_saved(path: Path) -> bool:
    return Path(path).suffix == SUFFIX


class Writer:
    """Logits of one text at a time into an open zip; `finish` writes the JSON that makes the file complete."""

    def __init__(self, zf: zipfile.ZipFile):
        self.zf, self.texts = zf, {}

    def add(self, name: str, text: str, ids: list[int], logits: np.ndarray) -> None:
        entry = f"logits/{len(self.texts)}.npy"
        with self.zf.open(entry, "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(logits, dtype=np.float32), allow_pickle=False)
        self.texts[name] = {"text": text, "ids": list(map(int, ids)), "logits": entry, "vocab": int(logits.shape[-1])}

    def finish(self, side: dict, sha256: dict[str, str]) -> None:
        meta = {"schema": SCHEMA, "reference": side, "sha256": sha256, "logits_dtype": "float32",
                "compute_dtype": "float32", "texts": self.texts}
        self.zf.writestr(META, json.dumps(meta))


@contextmanager
def writing(dst: Path, force: bool = False, atomic: bool = True) -> Iterator[Writer]:
    """A Writer into `dst`: atomically (a saved reference), or straight into a temporary folder's file."""
    def open_zip(path):
        return zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)

    if not atomic:
        with open_zip(dst) as zf:
            yield Writer(zf)
        return
    if not is_saved(dst):
        raise BadInput(dst, f"a saved reference's name ends in {SUFFIX} (that is how validate knows it)")
    with atomic_output(Path(dst), force) as partial, open_zip(partial) as zf:
        yield Writer(zf)


class Saved:
    """A saved reference, opened: its Side fields, texts and ids from the JSON; logits read per text on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.zf = zipfile.ZipFile(self.path)
            info = self.zf.getinfo(META)
            if info.file_size > MAX_META_BYTES:
                raise BadInput(self.path, f"{META} is {info.file_size} bytes, more than a reference holds")
            meta = json.loads(self.zf.read(META))
        except FileNotFoundError:
            raise BadInput(self.path, "does not exist") from None
        except (zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
            raise BadInput(self.path, f"not a saved reference ({e.__class__.__name__}: {e}); make one with "
                                      "`modelport validate REF --save-reference FILE.mpref`") from None
        if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
            raise BadInput(self.path, f"not a {SCHEMA} reference (schema {meta.get('schema')!r})"
                           if isinstance(meta, dict) else "reference.json is not an object")
        try:
            self.side = dict(meta["reference"])
            self.sha256 = dict(meta["sha256"])
            self.entries = {str(n): (str(t["text"]), [int(i) for i in t["ids"]], str(t["logits"]), int(t["vocab"]))
                            for n, t in meta["texts"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BadInput(self.path, f"reference.json lacks or mistypes {e}") from None
        if not self.entries or len({e[3] for e in self.entries.values()}) != 1:
            raise BadInput(self.path, "reference.json names no texts, or texts of different vocabularies")

    @property
    def texts(self) -> dict[str, str]:
        return {n: e[0] for n, e in self.entries.items()}

    @property
    def ids(self) -> dict[str, list[int]]:
        return {n: e[1] for n, e in self.entries.items()}

    @property
    def vocab(self) -> int:
        return next(iter(self.entries.values()))[3]

    def check_texts(self, texts: dict[str, str] | None) -> dict[str, str]:
        """The texts to run: the saved ones, or the given ones when they are the same; other texts are refused."""
        if texts is not None and texts != self.texts:
            raise BadInput(self.path, f"saved for other texts ({', '.join(self.texts)}); run without --text-file, "
                                      "or save a reference for these texts")
        return self.texts

    def logit_rows(self, name: str, rows: int) -> Iterator[np.ndarray]:
        """One text's logits, `rows` positions at a time, read straight from the file (one block in memory, not
        the text's whole [positions, vocab] array); the dtype and shape are checked against the JSON first and the
        entry's CRC once it has been read to its end."""
        text, ids, entry, vocab = self.entries[name]
        try:
            with self.zf.open(entry) as f:
                header = HEADERS.get(np.lib.format.read_magic(f))
                if header is None:
                    raise BadInput(self.path, f"{entry}: not a .npy version numpy writes for logits")
                shape, fortran, dtype = header(f)
                if dtype != np.float32 or fortran or shape != (len(ids), vocab):
                    raise BadInput(self.path, f"{entry}: {dtype} {shape}, expected float32 {(len(ids), vocab)}")
                for s in range(0, len(ids), rows):
                    n = min(rows, len(ids) - s)
                    raw = f.read(n * vocab * 4)
                    if len(raw) != n * vocab * 4:
                        raise BadInput(self.path, f"{entry}: truncated")
                    yield np.frombuffer(raw, dtype=np.float32).reshape(n, vocab)
                if f.read(1):  # reading to the end checks the CRC too
                    raise BadInput(self.path, f"{entry}: bytes after the logits")
        except (KeyError, zipfile.BadZipFile, ValueError, OSError) as e:
            raise BadInput(self.path, f"{entry}: {e.__class__.__name__}: {e}") from None

    def close(self) -> None:
        self.zf.close()
