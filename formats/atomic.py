"""Atomic output: write `DST.partial-PID-N` beside DST, fsync, publish. A crash, Ctrl-C or a full disk never leaves
a half file at DST; the partial is removed on any error, and partials of dead processes are swept on the next run.
Publication never clobbers without --force: of two runs writing one destination exactly one wins, and --force never
replaces a destination that is, holds or lies inside one of the run's sources (`protecting`)."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import itertools
import os
import shutil
import signal
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterable, Iterator

from .errors import BadInput, OutputExists, WriteFailed

_counter = itertools.count()
_sources: ContextVar[tuple[Path, ...]] = ContextVar("modelport_sources", default=())
RENAME_NOREPLACE = 1  # linux/fs.h
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)  # glibc >= 2.28; absent on musl and macOS
AT_FDCWD = -100
# errors that say the output could not be written for a reason of the destination, not of the input
WRITE_REASONS = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted", errno.EDQUOT: "disk quota exceeded"}


def _remove(path: Path) -> None:
    """Best effort: a partial that was never created, or sits on a read-only file system, is not an error."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def protecting(sources: Iterable[str | Path]) -> Iterator[None]:
    """While active, every atomic_output refuses (even with --force) a destination that is, contains or lies inside
    one of `sources`: replacing it would delete the input being read."""
    token = _sources.set(tuple(Path(s) for s in sources))
    try:
        yield
    finally:
        _sources.reset(token)


def _check_not_a_source(dst: Path) -> None:
    d = Path(os.path.realpath(dst))
    for src in _sources.get():
        s = Path(os.path.realpath(src))
        if d == s or d in s.parents or s in d.parents:
            how = "is" if d == s else "contains" if d in s.parents else "lies inside"
            raise BadInput(dst, f"{how} the source {src}; refusing to overwrite an input, even with --force")


def _lost(dst: Path) -> OutputExists:
    return OutputExists(dst, "was created by another run meanwhile; nothing was written")


def _publish_noreplace(partial: Path, dst: Path) -> None:
    """Rename `partial` to `dst` unless `dst` exists, atomically: renameat2(RENAME_NOREPLACE) where the kernel and
    file system have it, else link-then-unlink for a file (link never replaces) or a lock beside DST for a folder.
    Hand-written: Python's os has no renameat2 and no no-replace rename."""
    if _renameat2 is not None:
        if _renameat2(AT_FDCWD, os.fsencode(partial), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise _lost(dst)
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    if not partial.is_dir():
        try:
            os.link(partial, dst)
        except FileExistsError:
            raise _lost(dst) from None
        os.unlink(partial)
        return
    with open(dst.parent / f".{dst.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.lexists(dst):
            raise _lost(dst)
        os.rename(partial, dst)


def _publish_replace(partial: Path, dst: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():
        old = dst.parent / f"{dst.name}.partial-{os.getpid()}-{next(_counter)}"
        os.rename(dst, old)
        os.rename(partial, dst)
        _remove(old)
    else:
        os.replace(partial, dst)


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


@contextmanager
def atomic_output(dst: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a partial path to write (a file, or a folder the caller creates); on success it becomes DST."""
    dst = Path(dst)
    _check_not_a_source(dst)
    try:
        if os.path.lexists(dst) and not force:  # a dangling symlink too
            raise OutputExists(dst, "exists; pass --force to overwrite")
        if not dst.parent.is_dir():
            raise WriteFailed(dst, f"folder {dst.parent} does not exist")
        sweep_stale_partials(dst)
    except OSError as e:
        raise WriteFailed(dst, f"could not write output: {WRITE_REASONS.get(e.errno, e.strerror)}") from None
    partial = dst.parent / f"{dst.name}.partial-{os.getpid()}-{next(_counter)}"
    try:
        with _sigterm_as_interrupt():
            yield partial
            _fsync_tree(partial)
            (_publish_replace if force else _publish_noreplace)(partial, dst)
            _fsync_dir(dst.parent)
    except OSError as e:
        _remove(partial)
        reason = WRITE_REASONS.get(e.errno, e.strerror or str(e))
        raise WriteFailed(dst, f"could not write output: {reason}; nothing was written") from None
    except BaseException:
        _remove(partial)
        raise
