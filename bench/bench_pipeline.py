#!/usr/bin/env python3
"""Benchmark: `modelport run samples/recipe.toml` (the tiny llama to five targets, each validated), first run then
reruns, as a build pipeline runs it on every release.

Copies the sample recipe into bench/out/pipeline, makes the tiny sample beside it, then measures in the same run:
the first run's wall time (every job converts and validates) and each rerun's (every job up to date: the recipe is
checked, the sources hashed and the manifest compared, nothing imported that a skipped job does not need), and the
wall time of a bare `modelport --version` as the floor of any command.

Target: a rerun with everything up to date in under 2 s.

    .venv/bin/python bench/bench_pipeline.py            # table
    .venv/bin/python bench/bench_pipeline.py --json     # figures as JSON
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys

from common import OUT, REPO, load_average, log, machine, modelport_cmd, parser, run

RERUN_TARGET_S = 2.0


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--reps", type=int, default=5, help="reruns timed (the median is reported)")
    a = ap.parse_args()

    work = OUT / "pipeline"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("recipe.toml", "mixed.txt"):
        shutil.copy(REPO / "samples" / name, work / name)
    run([sys.executable, "-m", "modelport.samples.tiny", "llama", str(work / "out" / "tiny-llama")])
    load_start = load_average(warn=True)
    recipe = str(work / "recipe.toml")
    floor = statistics.median(run(modelport_cmd() + ["--version"])[0] for _ in range(a.reps))
    first, first_rss, _ = run(modelport_cmd() + ["run", recipe])
    log(f"first run: {first:.1f} s, peak RSS {first_rss / 1e9:.2f} GB")
    reruns = [run(modelport_cmd() + ["run", recipe])[0] for _ in range(a.reps)]
    rerun = statistics.median(reruns)
    manifest = json.loads((work / "out" / "release" / "manifest.json").read_text())
    figures = {"jobs": len(manifest["jobs"]), "first_run_s": round(first, 2), "rerun_s": round(rerun, 3),
               "reruns_s": [round(r, 3) for r in reruns], "version_floor_s": round(floor, 3),
               "rerun_target_s": RERUN_TARGET_S, "rerun_ok": rerun < RERUN_TARGET_S,
               "load_average": [round(load_start, 2), round(load_average(), 2)], "machine": machine()}
    shutil.rmtree(work, ignore_errors=True)
    if a.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{figures['jobs']} jobs: first run {first:.1f} s; rerun, all up to date: {rerun:.2f} s median of "
          f"{a.reps} (target < {RERUN_TARGET_S:.0f} s: {'ok' if figures['rerun_ok'] else 'MISSED'}); "
          f"`modelport --version` alone {floor:.2f} s")


if __name__ == "__main__":
    main()
