"""One job in a process of its own (a local child or a Ray worker): convert through modelport.api, validate the
output against its source when the job has a gate, hash what was written. The same function runs in both, so a
Ray run and a local run compute the same figures with the same thread counts."""
from __future__ import annotations

import os
import resource
import time
import traceback
from pathlib import Path

from modelport.formats.errors import ModelportError
from modelport.formats.hashing import sha256

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(threads: int, cpus: list[int] | None) -> None:
    """Keep the job to its share: its CPUs (affinity, which llama.cpp's and ggml's all-cores pools also obey) and
    thread counts for the runtimes that size their pools from the environment or torch."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


def outputs(dst: Path) -> dict[str, dict]:
    """sha256 and size of every file of an output (a file, or a folder's files by relative name)."""
    files = sorted(p for p in dst.rglob("*") if p.is_file()) if dst.is_dir() else [dst]
    base = dst if dst.is_dir() else dst.parent
    return {f.relative_to(base).as_posix(): {"sha256": sha256(f), "bytes": f.stat().st_size} for f in files}


def execute(job, cpus: list[int] | None = None) -> dict:
    """Run `job` (plan.Job); the result the manifest records. Errors are results too (a one-line message and the
    exit code they would have had), so one bad job does not stop the others."""
    from modelport import api
    from modelport.validators import texts

    t0 = time.perf_counter()
    limit_threads(job.threads, cpus)
    result: dict = {"status": "ok"}
    try:
        api.convert(job.src, job.dst, job.format, True, **job.options)
        if job.gate is not None:
            text = job.gate["text_file"]
            rep = api.validate(job.src, job.dst, texts.from_file(Path(text)) if text else None,
                               **job.gate["limits"]).to_json()
            result["validate"] = {k: rep[k] for k in ("passed", "failed_gates", "tier", "gates", "overall")}
            result["validate"]["candidate_type"] = rep["candidate"]["type"]
            result["status"] = "ok" if rep["passed"] else "gate_failed"
        result["outputs"] = outputs(Path(job.dst))
    except ModelportError as e:
        result = {"status": "error", "error": str(e), "exit_code": e.exit_code}
    except Exception as e:  # a bug: still a result, with where it happened
        result = {"status": "error", "error": f"{type(e).__name__}: {e} "
                                             f"({traceback.extract_tb(e.__traceback__)[-1].filename})",
                  "exit_code": 1}
    result["wall_s"] = round(time.perf_counter() - t0, 3)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return result


def child(conn, job, cpus: list[int], parent: int) -> None:
    """A local child's entry: die with the parent (a SIGKILLed run leaves no orphan finishing a job behind its
    back; the next run sweeps the partial), run the job, send the result back."""
    _die_with(parent)
    conn.send(execute(job, cpus))
    conn.close()


def _die_with(parent: int) -> None:
    # Linux prctl(PR_SET_PDEATHSIG, SIGKILL) through libc: Python has no binding for it (by hand, for that reason)
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)
