"""Where a writer's tensor bytes go once it has written its header: `streaming(f)` yields a sink that writes the rest
of the file in order.

On Linux the sink writes with direct I/O (O_DIRECT): tensor bytes go from our buffers to the disk without a copy
into the page cache, the fsync before publication finds nothing left to flush, and converting a model does not push
the user's other files out of the cache. Measured on the 1B f16 conversion (bench/bench_convert.py): about 1 s less
system time than writing through the page cache. Where there is no direct I/O (macOS, a file system that refuses
it) or MODELPORT_BUFFERED_IO=1 asks for it, the sink writes through the page cache and starts writeback as it goes.
Both make the same bytes. Hand-written: Python has no direct-I/O writer (it needs aligned buffers, offsets and
lengths), and none of our libraries writes through one."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import queue
import threading
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from .model import FileSlice

Progress = Callable[[int], None] | None
NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}
COPY_BYTES = 64 << 20  # one kernel copy, or one read into the direct sink's buffers, at a time
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_SYNC_FILE_RANGE = getattr(_libc, "sync_file_range", None)  # Linux only
if _SYNC_FILE_RANGE is not None:
    _SYNC_FILE_RANGE.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h


class BufferedSink:
    """Through the page cache: unchanged bytes are copied file to file in the kernel (copy_file_range, as cp does),
    and each few hundred MB written is handed to the kernel's writeback at once, so the fsync before the rename has
    little left to do. Linux's sync_file_range(WRITE) queues the range without waiting (no Python binding: through
    libc) and the range before it, clean by then, is dropped from the cache; elsewhere POSIX_FADV_DONTNEED on the
    dirty pages does both (1B f16 conversion, four alternating runs each: median 4.1 s against 4.9 s with fadvise
    alone, 6.1 s with neither)."""

    STEP = 256 << 20

    def __init__(self, f: IO[bytes]):
        self.f, self.done = f, f.tell()
        self.dropped = self.done

    def tell(self) -> int:
        return self.f.tell()

    def write(self, data) -> int:
        n = self.f.write(data)
        self._behind()
        return n

    def copy(self, src: "FileSlice", progress: Progress = None) -> int:
        if hasattr(os, "copy_file_range"):
            start = self.f.tell()
            try:
                return self._kernel_copy(src, progress)
            except OSError as e:
                if e.errno not in NO_KERNEL_COPY:
                    raise
                self.f.seek(start)  # this pair of file systems cannot: through user space instead
        for pos in range(0, src.nbytes, COPY_BYTES):
            block = src.read(pos, min(pos + COPY_BYTES, src.nbytes))
            self.write(block)
            if progress:
                progress(len(block))
        return src.nbytes

    def _kernel_copy(self, src: "FileSlice", progress: Progress) -> int:
        self.f.flush()
        out = self.f.fileno()
        with open(src.path, "rb", buffering=0) as f:
            pos, left, dst = src.offset, src.nbytes, self.f.tell()
            while left:
                n = os.copy_file_range(f.fileno(), out, min(left, COPY_BYTES), pos, dst)
                if n == 0:
                    raise EOFError(f"{src.path}: unexpected end of file at byte {pos}")
                pos, dst, left = pos + n, dst + n, left - n
                self.f.seek(dst)
                self._behind()
                if progress:
                    progress(n)
        return src.nbytes

    def _behind(self) -> None:
        pos = self.f.tell()
        if pos - self.done < self.STEP:
            return
        self.f.flush()
        fd = self.f.fileno()
        if _SYNC_FILE_RANGE is not None:
            _SYNC_FILE_RANGE(fd, self.done, pos - self.done, SYNC_FILE_RANGE_WRITE)
            clean = self.done - self.STEP  # written back by now: dropped once, from where the last drop ended
            if clean > self.dropped:
                os.posix_fadvise(fd, self.dropped, clean - self.dropped, os.POSIX_FADV_DONTNEED)
                self.dropped = clean
        elif hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, self.done, pos - self.done, os.POSIX_FADV_DONTNEED)
        self.done = pos

    def close(self) -> None:
        self.f.flush()

    def abort(self) -> None:
        pass


class DirectSink:
    """Direct I/O: bytes are gathered into page-aligned buffers of BLOCK bytes, which a writer thread puts on disk
    while the next fills (DEPTH buffers in all, so that much is in flight). Direct I/O wants buffer addresses, file
    offsets and lengths aligned to the device's block: the first buffer starts at the aligned offset below the end of
    the header (the header's last bytes are read back into it), and the last is padded to ALIGN, then the file is
    truncated to its length."""

    ALIGN = 4096  # a multiple of every logical block size in use (512 and 4096)
    BLOCK = 8 << 20
    DEPTH = 4

    def __init__(self, f: IO[bytes], fd: int):
        f.flush()
        self.f, self.fd, self.error, self.buffered = f, fd, None, False
        start = f.tell()
        self.offset = start - start % self.ALIGN  # file offset of self.buf[0]
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.DEPTH):
            self.free.put(mmap.mmap(-1, self.BLOCK))
        self.todo: queue.SimpleQueue = queue.SimpleQueue()
        self.buf, self.fill = self.free.get(), start - self.offset
        if self.fill:
            try:
                head = os.open(f.name, os.O_RDONLY)
                try:
                    self.buf[:self.fill] = os.pread(head, self.fill, self.offset)
                finally:
                    os.close(head)
            except BaseException:
                os.close(fd)
                raise
        self.thread = threading.Thread(target=self._writer, name="modelport-direct-io", daemon=True)
        self.thread.start()

    def _writer(self) -> None:
        while (item := self.todo.get()) is not None:
            buf, offset, n = item
            if self.error is None:
                try:
                    self._put(buf, offset, n)
                except BaseException as e:  # noqa: BLE001 - raised again in the writing thread (_submit, close)
                    self.error = e
            self.free.put(buf)

    def _put(self, buf: mmap.mmap, offset: int, n: int) -> None:
        with memoryview(buf) as view:
            done = 0
            while done < n:
                try:
                    done += os.pwrite(self.fd, view[done:n], offset + done)
                except OSError as e:  # a file system that opens for direct I/O but will not do it: buffered
                    if e.errno != errno.EINVAL or self.buffered:
                        raise
                    os.close(self.fd)
                    self.fd, self.buffered = os.open(self.f.name, os.O_WRONLY), True

    def _submit(self, n: int) -> None:
        if self.error:
            raise self.error
        self.todo.put((self.buf, self.offset, n))
        self.offset += n
        self.buf, self.fill = self.free.get(), 0

    def tell(self) -> int:
        return self.offset + self.fill

    def write(self, data) -> int:
        with memoryview(data) as whole, whole.cast("B") as view:
            total, pos = len(view), 0
            while pos < total:
                n = min(total - pos, self.BLOCK - self.fill)
                self.buf[self.fill:self.fill + n] = view[pos:pos + n]
                self.fill, pos = self.fill + n, pos + n
                if self.fill == self.BLOCK:
                    self._submit(self.BLOCK)
        return total

    def copy(self, src: "FileSlice", progress: Progress = None) -> int:
        """Unchanged bytes are read from their file straight into the output buffers: one copy, as the kernel's."""
        with open(src.path, "rb", buffering=0) as f:
            pos, left = src.offset, src.nbytes
            while left:
                with memoryview(self.buf) as view:
                    n = os.preadv(f.fileno(), [view[self.fill:self.fill + min(left, self.BLOCK - self.fill)]], pos)
                if n == 0:
                    raise EOFError(f"{src.path}: unexpected end of file at byte {pos}")
                self.fill, pos, left = self.fill + n, pos + n, left - n
                if self.fill == self.BLOCK:
                    self._submit(self.BLOCK)
                if progress:
                    progress(n)
        return src.nbytes

    def close(self) -> None:
        end = self.tell()
        try:
            if self.fill:
                pad = -self.fill % self.ALIGN
                self.buf[self.fill:self.fill + pad] = bytes(pad)
                self._submit(self.fill + pad)
            self._stop()
            if self.error:
                raise self.error
            os.ftruncate(self.fd, end)
        finally:
            self.abort()
        self.f.seek(end)

    def abort(self) -> None:
        """Stops the writer thread and closes the descriptor, once; buffers still queued are not written."""
        if self.fd < 0:
            return
        self.error = self.error or InterruptedError("aborted")
        self._stop()
        os.close(self.fd)
        self.fd = -1

    def _stop(self) -> None:
        if self.thread.is_alive():
            self.todo.put(None)
            self.thread.join()


def _direct_fd(f: IO[bytes]) -> int | None:
    """A second descriptor of `f`'s file opened for direct I/O, or None where there is none to have."""
    if not hasattr(os, "O_DIRECT") or os.environ.get("MODELPORT_BUFFERED_IO") == "1":
        return None
    try:
        return os.open(f.name, os.O_WRONLY | os.O_DIRECT)
    except (OSError, TypeError):  # EINVAL: the file system has no direct I/O; TypeError: `f` has no path
        return None


@contextmanager
def streaming(f: IO[bytes]) -> Iterator[BufferedSink | DirectSink]:
    """The rest of `f`, from its current position: a direct sink where the platform and file system have one, else
    a buffered one. On leaving, everything is written and `f` is positioned at the end; on an error, nothing more
    is written."""
    fd = _direct_fd(f)
    out = DirectSink(f, fd) if fd is not None else BufferedSink(f)
    try:
        yield out
        out.close()
    finally:
        out.abort()  # after close, nothing left to do
