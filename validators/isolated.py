"""One phase of a command in a fresh process, so that all it allocated goes back to the system when it ends.

validate's streamed reference side runs so: after it frees its weights and logits, the process still holds about
0.5 GB (torch's and transformers' state, glibc's arenas; malloc_trim does not give it back) and the candidate would
load beside that. multiprocessing's spawn context gives a clean interpreter; what it does not do, and this module
does, is relay progress lines while the child runs and bring a ModelportError back as itself."""
from __future__ import annotations

import multiprocessing
import pickle
import traceback
from multiprocessing.connection import Connection
from typing import Callable

from modelport.formats.errors import ModelportError


def run(fn: Callable, *args, progress: Callable[[str], None] | None = None):
    """fn(*args, progress=...) in a spawned child; its return value, or its exception raised here."""
    child, recv = spawn(_child, fn, args, progress is not None)
    try:
        while True:
            try:
                kind, value = recv.recv()
            except EOFError:  # died without a word: the OOM killer, a crash inside a runtime
                child.join()
                raise RuntimeError(f"the {fn.__name__} process died (exit {child.exitcode})") from None
            if kind == "progress":
                progress(value)
            elif kind == "error":
                raise value
            else:
                return value
    finally:
        recv.close()
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join()


def spawn(target: Callable, *args) -> tuple[multiprocessing.Process, Connection]:
    """target(send, *args) in a fresh interpreter (spawn: no inherited threads or state), and the end of the pipe it
    sends on; the parent's copy of the sending end is closed, so a child that dies reads as EOFError."""
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=target, args=(send, *args), daemon=True)
    child.start()
    send.close()
    return child, recv


def _child(send, fn: Callable, args: tuple, relay: bool) -> None:
    try:
        send.send(("done", fn(*args, progress=(lambda line: send.send(("progress", line))) if relay else None)))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the caller, who decides
        send.send(("error", e if isinstance(e, ModelportError) else _portable(e)))


def _portable(e: BaseException) -> BaseException:
    """`e` with the child's traceback as a note (shown by --debug), or a RuntimeError naming it where `e` does not
    pickle."""
    e.add_note("in the child process:\n" + traceback.format_exc())
    try:
        pickle.dumps(e)
        return e
    except Exception:  # noqa: BLE001 - any exception can fail to pickle in its own way
        portable = RuntimeError(f"{type(e).__name__}: {e}")
        portable.add_note(e.__notes__[-1])
        return portable
