"""Source-file sha256s for provenance, computed on a background thread while the conversion streams (hashlib
releases the GIL). Writers put a same-length placeholder in the header and patch it in once the data is written.

A file's digest is kept in a cache folder, keyed by the file's identity and its size, mtime and ctime (as git's index
and make trust them), so converting one download to several targets hashes it once: sha256 runs at 1.7 GB/s on a
core here, a third of the CPU time of an f16 conversion on 2 cores. MODELPORT_CACHE names the folder (default
$XDG_CACHE_HOME/modelport or ~/.cache/modelport); MODELPORT_CACHE=off keeps nothing."""
from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_HEX = 64
# bytes per read: each read and update takes the GIL back, and behind a busy main thread a waiting thread gets it
# every 5 ms (sys.getswitchinterval), so small blocks starve the hash; 8 MiB kept the first f16 conversion of the 1B
# checkpoint at 2.7-2.8 s against 3.1-3.2 s with 1 MiB (32 MiB: 3.2 s, the blocks fall out of the cache)
BLOCK = 8 << 20
RACY_NS = 2_000_000_000  # a file changed this recently may change again within its timestamps' granularity
ENTRY = re.compile(r"(\d+:\d+:\d+) ([0-9a-f]{64})\n")


def _cache() -> Path | None:
    where = os.environ.get("MODELPORT_CACHE")
    if where == "off":
        return None
    if where:
        return Path(where) / "sha256"
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelport" / "sha256"
    except RuntimeError:  # no home folder to be found
        return None


def _stamp(st: os.stat_result) -> tuple[str, str]:
    """The cache entry's name (the file's identity) and the key its digest is valid for."""
    return f"{st.st_dev}-{st.st_ino}", f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _cached(folder: Path | None, st: os.stat_result) -> str | None:
    if folder is None:
        return None
    name, key = _stamp(st)
    try:
        m = ENTRY.fullmatch((folder / name).read_text())
    except (OSError, UnicodeDecodeError):
        return None
    return m[2] if m and m[1] == key else None


def _remember(folder: Path | None, st: os.stat_result, digest: str) -> None:
    """Best effort, written whole or not at all; never for a file changed in the last RACY_NS."""
    if folder is None or time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
        return
    name, key = _stamp(st)
    part = folder / f".{name}.{os.getpid()}-{threading.get_ident()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        part.write_text(f"{key} {digest}\n")
        os.replace(part, folder / name)
    except OSError:
        part.unlink(missing_ok=True)


def sha256(path: Path, buf: bytearray | None = None) -> str:
    """A file's sha256, from the cache while the file is unchanged. Read into one reused buffer (`buf`, or one of
    BLOCK bytes): a fresh bytes object per read costs its allocation and page faults, 0.75 s of CPU per 2.5 GB here
    (1.5 s against 2.3 s), on the cores the conversion is using."""
    folder = _cache()
    with open(path, "rb", buffering=0) as fh:
        before = os.fstat(fh.fileno())
        digest = _cached(folder, before)
        if digest is None:
            buf = buf if buf is not None else bytearray(BLOCK)
            h = hashlib.sha256()
            with memoryview(buf) as view:
                while n := fh.readinto(buf):
                    h.update(view[:n])
            digest = h.hexdigest()
            if _stamp(os.fstat(fh.fileno())) == _stamp(before):  # unchanged while it was read
                _remember(folder, before, digest)
    return digest


class SourceHashes:
    def __init__(self, files: list[Path]):
        self.files = [Path(f) for f in files]
        self._digests: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = bytearray(BLOCK)
        for f in self.files:
            self._digests[f.name] = sha256(f, buf)

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
