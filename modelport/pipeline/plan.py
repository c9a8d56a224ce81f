"""The plan: one job per source x target, each with its output name, a key that changes whenever its result could
(source bytes, format, options, gate, tool version), and the memory, disk and threads it needs, estimated from
headers alone before anything runs."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modelport.convert import codec as codecs
from modelport.convert import pivot, provenance
from modelport.formats.hashing import sha256
from modelport.validators import memory

from .. import hub
from .recipe import Recipe, RecipeError, Source

# a job's process with its runtimes imported (torch + transformers, onnxruntime, llama.cpp): measured peak RSS
# of the sample recipe's jobs on the tiny llama was 0.9-1.3 GB, most of it the runtimes themselves
PROCESS_BYTES = 1_500_000_000
# converting streams row blocks, but onnxruntime's int4 quantizer and the dtype casts hold a whole tensor in f32
# and its result: twice the largest tensor in f32
CONVERT_TENSOR_COPIES = 2


@dataclass
class SourceState:
    name: str
    location: str  # as the recipe gives it
    path: Path  # local: the folder or file (a hub id's snapshot in the hub cache)
    files: dict[str, dict]  # relative name -> {"sha256", "bytes", "mtime_ns"}
    parameters: int
    largest_tensor: int  # elements
    model: object  # the pivot (headers only), for the codecs' estimates


@dataclass
class Job:
    name: str  # the output's name, unique in the run
    source: str
    src: str  # local path of the source
    dst: str  # local path of the output
    format: str
    options: dict
    gate: dict | None  # {"limits": {...}, "text_file": str | None}
    key: str
    disk_bytes: int
    memory_bytes: int
    threads: int = 1
    skip: bool = False  # its last result stands

    def record(self) -> dict:
        """What the manifest keeps of the job as planned (no local paths: a run elsewhere records the same)."""
        return {"source": self.source, "format": self.format, "options": _jsonable(self.options),
                "gate": self.gate and {**self.gate, "text_file": self.gate["text_file"] and
                                       Path(self.gate["text_file"]).name},
                "key": self.key, "estimate": {"disk_bytes": self.disk_bytes, "memory_bytes": self.memory_bytes,
                                              "threads": self.threads}}


def _jsonable(options: dict) -> dict:
    return {k: v.name if isinstance(v, Path) else v for k, v in options.items()}


def _files(path: Path) -> list[Path]:
    """Every file a source's result can depend on: a folder's files (tokenizer and config included), or the file
    and the files it reads beside it (ONNX external data)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [Path(f) for f in pivot.load(path).metadata["source_files"]]


def hash_source(path: Path, known: dict[str, dict]) -> dict[str, dict]:
    """sha256 of each file; a file whose size and mtime are what the last manifest saw keeps its recorded hash
    (git's index does the same), so an unchanged multi-GB source is not re-read on every run."""
    out = {}
    base = path if path.is_dir() else path.parent
    for f in _files(path):
        st, rel = f.stat(), f.relative_to(base).as_posix()
        old = known.get(rel, {})
        same = old.get("bytes") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns
        out[rel] = {"sha256": old["sha256"] if same else sha256(f), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def load_source(recipe: Recipe, source: Source, known: dict[str, dict]) -> SourceState:
    path = hub.snapshot(source.location) if source.is_hub else recipe.path.parent / source.location
    model = pivot.load(path)
    return SourceState(source.name, source.location, path, hash_source(path, known),
                       sum(r.n_elements for r in model.tensors.values()),
                       max((r.n_elements for r in model.tensors.values()), default=0), model)


def _key(src: SourceState, target, name: str) -> str:
    files = {k: v["sha256"] for k, v in src.files.items()}
    extra = {k: sha256(v) for k, v in target.options.items() if isinstance(v, Path)}  # an imatrix by its bytes
    gate = target.gate and {"limits": target.gate.limits,
                            "text": target.gate.text_file and sha256(target.gate.text_file)}
    blob = json.dumps({"files": files, "format": target.format, "options": _jsonable(target.options),
                       "extra": extra, "gate": gate, "name": name, "version": provenance.VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def make(recipe: Recipe, sources: list[SourceState], threads: int, done: Callable[[Job], bool],
         estimate_all: bool = False) -> list[Job]:
    """Every source x target, in recipe order, `skip` set where `done(job)` says its result stands; memory and disk
    are estimated for the jobs that will run (all of them with `estimate_all`: a dry run). Two jobs writing one
    output name is a recipe error."""
    jobs, seen = [], {}
    for src in sources:
        for target in recipe.targets:
            codec = codecs.get(target.format)
            name = target.name.format(name=src.name) if target.name else codec.output_name(src.name, target.resolved)
            if name in seen:
                raise RecipeError(recipe.path, f"{target.key}: writes {name}, as {seen[name]} does; give one a name")
            seen[name] = target.key
            gate = target.gate and {"limits": target.gate.limits,
                                    "text_file": target.gate.text_file and str(target.gate.text_file)}
            job = Job(name, src.name, str(src.path.resolve()), str((recipe.out / src.name / name).resolve()),
                      target.format, target.options, gate, _key(src, target, name), 0, 0, threads)
            job.skip = done(job)
            if estimate_all or not job.skip:
                job.disk_bytes = codec.planned_bytes(src.model, target.resolved)
                job.memory_bytes = PROCESS_BYTES + CONVERT_TENSOR_COPIES * 4 * src.largest_tensor
                if target.gate:
                    # validate runs its sides in turn: the larger of the fp32 reference and the stored candidate
                    side = max(memory.in_memory(src.parameters), memory.stored(job.disk_bytes))
                    job.memory_bytes = max(job.memory_bytes, PROCESS_BYTES + side)
            jobs.append(job)
    return jobs


def cpus() -> list[int]:
    """The CPUs this process may run on (a container's or taskset's share, not the machine's count)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
