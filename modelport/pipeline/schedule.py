"""Where jobs run: local child processes under a scheduler that knows each job's memory and threads, or Ray tasks on
a cluster. Both call `done(job, result)` as each job finishes (the run writes its manifest there), and both run the
same worker.execute, so their outputs and figures agree."""
from __future__ import annotations

import os
from multiprocessing.connection import wait
from typing import Callable

from modelport.formats.errors import RuntimeMissing
from modelport.validators import isolated, memory

from . import worker
from .plan import Job

Done = Callable[[Job, dict], None]


def _refused(job: Job, budget: int) -> dict:
    return {"status": "error", "exit_code": 2, "wall_s": 0.0, "peak_rss_bytes": 0,
            "error": f"{job.name}: needs about {job.memory_bytes / 2**30:.1f} GiB, more than the "
                     f"{budget / 2**30:.1f} GiB available; not started"}


class Local:
    """Starts a job only when its memory fits in what is left of the memory available at the start and enough
    CPUs are free for its threads (each child is pinned to its own CPUs); a job that could never fit is refused
    without starting. At most `jobs` run at once."""

    def __init__(self, jobs: int, cpus: list[int], available: int | None = None):
        self.jobs, self.cpus = jobs, cpus
        self.budget = available if available is not None else memory.available_bytes()

    def run(self, todo: list[Job], done: Done) -> None:
        free, used, pending = list(self.cpus), 0, list(todo)
        running: dict = {}  # connection -> (job, process, cpus)
        try:
            while pending or running:
                for job in list(pending):
                    if self.budget is not None and job.memory_bytes > self.budget:
                        pending.remove(job)
                        done(job, _refused(job, self.budget))
                        continue
                    fits = self.budget is None or used + job.memory_bytes <= self.budget
                    if len(running) < self.jobs and fits and len(free) >= min(job.threads, len(self.cpus)):
                        mine, free = free[:job.threads], free[job.threads:]
                        proc, recv = isolated.spawn(worker.child, job, mine, os.getpid())
                        running[recv] = (job, proc, mine)
                        used += job.memory_bytes
                        pending.remove(job)
                if not running:
                    continue
                for conn in wait(list(running)):
                    job, proc, mine = running.pop(conn)
                    try:
                        result = conn.recv()
                    except EOFError:  # the child died without a word (OOM killer, a crash in a runtime)
                        proc.join()
                        result = {"status": "error", "exit_code": 1, "wall_s": 0.0, "peak_rss_bytes": 0,
                                  "error": f"{job.name}: the job's process died (exit {proc.exitcode})"}
                    proc.join()
                    free, used = sorted(free + mine), used - job.memory_bytes
                    done(job, result)
        finally:
            for _, proc, _ in running.values():
                proc.kill()


def ray_module():
    try:
        import ray
    except ImportError:
        raise RuntimeMissing(None, "--ray needs Ray: pip install 'modelport[ray]'") from None
    return ray


class Ray:
    """Each job a Ray task asking for its threads as CPUs and its memory estimate as memory, on a fresh worker
    process (max_calls=1: its peak memory is its own). `address` None starts a local cluster; an existing
    `ray.init` is used as it is."""

    def __init__(self, address: str | None):
        self.ray = ray_module()
        if not self.ray.is_initialized():
            self.ray.init(address=address, include_dashboard=False, log_to_driver=False)

    def run(self, todo: list[Job], done: Done) -> None:
        ray = self.ray
        capacity = ray.cluster_resources().get("memory")
        task = ray.remote(max_calls=1)(worker.execute)
        futures = {}
        for job in todo:
            if capacity is not None and job.memory_bytes > capacity:
                done(job, _refused(job, int(capacity)))
                continue
            futures[task.options(num_cpus=job.threads, memory=job.memory_bytes).remote(job)] = job
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1)
            job = futures.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as e:  # the task's worker died or Ray could not run it
                result = {"status": "error", "exit_code": 1, "wall_s": 0.0, "peak_rss_bytes": 0,
                          "error": f"{job.name}: Ray task failed: {str(e).splitlines()[0]}"}
            done(job, result)
