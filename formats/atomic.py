"""Atomic output: write `DST.partial-PID-N` beside DST, fsync, rename. A crash, Ctrl-C or a full disk never leaves
a half file at DST; the partial is removed on any error, and partials of dead processes are swept on the next run."""
from __future__ import annotations

import errno
import itertools
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputExists, WriteFailed

_counter = itertools.count()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_partials(dst: Path) -> None:
    """Remove `DST.partial-PID-*` left by a process that was killed (SIGKILL cannot clean up after itself)."""
    for p in dst.parent.glob(f"{dst.name}.partial-*"):
        pid = p.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            _remove(p)


def _fsync_tree(path: Path) -> None:
    paths = sorted(path.rglob("*")) + [path] if path.is_dir() else [path]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C so the partial is removed (only possible in the main thread)."""
    try:
        old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class WriteBehind:
    """Starts the kernel's writeback of each few hundred MB as soon as it is written (POSIX_FADV_DONTNEED on dirty
    pages queues them for writeback and drops them once clean), so the fsync before the rename has little left to
    do and a large output does not crowd the page cache."""

    STEP = 256 << 20

    def __init__(self, f):
        self.f, self.done = f, f.tell()

    def __call__(self) -> None:
        pos = self.f.tell()
        if pos - self.done >= self.STEP and hasattr(os, "posix_fadvise"):
            self.f.flush()
            os.posix_fadvise(self.f.fileno(), self.done, pos - self.done, os.POSIX_FADV_DONTNEED)
            self.done = pos


@contextmanager
def atomic_output(dst: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a partial path to write (a file, or a folder the caller creates); on success it becomes DST."""
    dst = Path(dst)
    if dst.exists() and not force:
        raise OutputExists(dst, "exists; pass --force to overwrite")
    if not dst.parent.is_dir():
        raise WriteFailed(dst, f"folder {dst.parent} does not exist")
    sweep_stale_partials(dst)
    partial = dst.parent / f"{dst.name}.partial-{os.getpid()}-{next(_counter)}"
    try:
        with _sigterm_as_interrupt():
            yield partial
            _fsync_tree(partial)
            if dst.is_dir() and not dst.is_symlink():
                old = dst.parent / f"{dst.name}.partial-{os.getpid()}-{next(_counter)}"
                os.rename(dst, old)
                os.rename(partial, dst)
                _remove(old)
            else:
                os.replace(partial, dst)
            _fsync_dir(dst.parent)
    except OSError as e:
        _remove(partial)
        reason = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise WriteFailed(dst, f"could not write output: {reason}; nothing was written") from None
    except BaseException:
        _remove(partial)
        raise
