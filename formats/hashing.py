"""Source-file sha256s for provenance, computed on a background thread while the conversion streams (hashlib
releases the GIL), so hashing adds no wall time. Writers put a same-length placeholder in the header and patch
it in once the data is written."""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_HEX = 64


class SourceHashes:
    def __init__(self, files: list[Path]):
        self.files = [Path(f) for f in files]
        self._digests: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for f in self.files:
            h = hashlib.sha256()
            with open(f, "rb", buffering=0) as fh:
                while block := fh.read(16 << 20):
                    h.update(block)
            self._digests[f.name] = h.hexdigest()

    def _format(self, digests: dict[str, str]) -> str:
        return ",".join(f"{f.name}:{digests[f.name]}" for f in self.files)

    @property
    def placeholder(self) -> str:
        return self._format({f.name: "0" * _HEX for f in self.files})

    def text(self) -> str:
        """`name:sha256,...`, waiting for the hashing to finish; the same length as `placeholder`."""
        self._thread.join()
        return self._format(self._digests)


@dataclass(frozen=True)
class Late:
    """A metadata string known only after the data is written: key, placeholder, and how to get the value."""

    key: str
    placeholder: str
    value: Callable[[], str]
