#!/usr/bin/env python3
"""Benchmark: HF safetensors -> ONNX on a Llama-3.2-1B-shaped checkpoint (2.47 GB bf16), f16 and int4 (`ort` ops),
and int4 as standard-operator QDQ (`qdq` ops, against `ort` int4 in the same run).

In the same run and on the same input, times and measures the peak RSS (os.wait4 on the child) of:
- `modelport convert SRC DIR --to onnx --dtype f16 --ops ort`, `... --quant int4 --ops ort` and `--ops qdq`;
- the references (skip with --no-reference): onnxruntime-genai's builder (`-p int4 -e cpu` and `-p fp16 -e cpu`)
  and optimum's exporter (`optimum-cli export onnx --task text-generation-with-past`, fp32).

Targets (issue 5): each modelport conversion <= 20 s wall and <= 1.5 GB peak RSS on the 2-core machine.

    .venv/bin/python bench/bench_onnx.py               # table
    .venv/bin/python bench/bench_onnx.py --json        # figures as JSON
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from common import (MODELS, OUT, REPO, SHAPE, dir_bytes, ensure_model, load_average, log, machine, modelport_cmd,
                    parser, run)

# optimum-onnx caps transformers below 4.58, so its CLI lives in the environment `make test` keeps for it
OPTIMUM_CLI = REPO / ".venv-optimum" / "bin" / "optimum-cli"
WALL_TARGET_S = 20.0
RSS_TARGET_BYTES = 1.5e9


def jobs(src, a) -> list[tuple[str, list[str], bool]]:
    """(label, command, is ours) in the order they run."""
    ours = [
        ("modelport f16 (ort)", modelport_cmd() + ["convert", str(src), str(OUT / "mp-f16"), "--to", "onnx",
                                                   "--dtype", "f16", "--ops", "ort", "--force"], True),
        ("modelport int4 (ort)", modelport_cmd() + ["convert", str(src), str(OUT / "mp-int4"), "--to", "onnx",
                                                    "--quant", "int4", "--ops", "ort", "--force"], True),
        ("modelport int4 (qdq)", modelport_cmd() + ["convert", str(src), str(OUT / "mp-qdq"), "--to", "onnx",
                                                    "--quant", "int4", "--ops", "qdq", "--force"], True),
    ]
    if a.no_reference:
        return ours
    builder = [str(a.ref_python), "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-e", "cpu",
               "-c", str(OUT / "genai-cache")]
    refs = [
        ("onnxruntime-genai builder int4", builder + ["-o", str(OUT / "genai-int4"), "-p", "int4"], False),
        ("onnxruntime-genai builder fp16", builder + ["-o", str(OUT / "genai-fp16"), "-p", "fp16"], False),
    ]
    if not a.no_optimum:
        refs.append(("optimum-cli export onnx (fp32)",
                     [str(a.optimum_cli), "export", "onnx", "--model", str(src), "--task",
                      "text-generation-with-past", str(OUT / "optimum")], False))
    return ours + refs


def main() -> None:
    ap = parser(__doc__, keep=True)
    ap.add_argument("--no-reference", action="store_true", help="time modelport only")
    ap.add_argument("--no-optimum", action="store_true", help="skip optimum's exporter (about 2 minutes, 12 GB)")
    ap.add_argument("--ref-python", type=Path, default=Path(sys.executable),
                    help="python with onnxruntime-genai and the transformers 5 its builder imports (default: this one)")
    ap.add_argument("--optimum-cli", type=Path, default=OPTIMUM_CLI,
                    help="optimum-cli with transformers < 4.58 (default: .venv-optimum's, which `make test` sets up)")
    ap.add_argument("--reps", type=int, default=1, help="rounds of every run; the best wall and largest peak count")
    a = ap.parse_args()

    src = ensure_model(MODELS / "l32-1b")
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    load_start = load_average(warn=True)
    rows = {}
    for rep in range(a.reps):  # rounds, not each run back to back: a slow spell of the machine hits every run alike
        for label, cmd, ours in jobs(src, a):
            os.sync()
            log(f"running {label}" + (f" (round {rep + 1})" if a.reps > 1 else ""))
            wall, rss, code = run(cmd, ok=(0,) if ours else tuple(range(-64, 256)))  # a reference may fail: say so
            out_dir = next(p for p in cmd if p.startswith(str(OUT)) and "cache" not in p)
            row = rows.setdefault(label, {"label": label, "ours": ours, "walls_s": [], "peak_rss_bytes": 0,
                                          "exit_code": 0, "command": " ".join(cmd).replace(str(REPO) + "/", "")
                                          .replace(sys.executable, "python")})
            row["walls_s"].append(wall)
            row.update(wall_s=min(row["walls_s"]), peak_rss_bytes=max(row["peak_rss_bytes"], rss),
                       exit_code=row["exit_code"] or code, output_bytes=dir_bytes(Path(out_dir)))
            if ours:
                row.update(wall_pass=row["wall_s"] <= WALL_TARGET_S, rss_pass=row["peak_rss_bytes"] <= RSS_TARGET_BYTES)
            log(f"  {wall:.1f} s, peak RSS {rss / 1e9:.2f} GB" + (f", FAILED (exit {code})" if code else ""))
    rows = list(rows.values())
    if not a.keep:
        shutil.rmtree(OUT, ignore_errors=True)
    res = {"input": str(src.relative_to(REPO)), "input_bytes": dir_bytes(src), "runs": rows,
           "wall_target_s": WALL_TARGET_S, "rss_target_bytes": RSS_TARGET_BYTES,
           "loadavg_1min_start_end": [load_start, load_average()],
           "machine": machine(),
           "date": time.strftime("%Y-%m-%d")}
    if a.json:
        print(json.dumps(res, indent=2))
        return
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    print(f"HF -> ONNX, {SHAPE} ({res['input_bytes'] / 1e9:.2f} GB bf16), {os.cpu_count()} CPUs, {res['date']}")
    print(f"  {'':34} {'wall':>8} {'peak RSS':>10} {'output':>9}")
    for r in rows:
        verdict = f"  wall {ok(r['wall_pass'])}, RSS {ok(r['rss_pass'])}" if r["ours"] else ""
        failed = f"  failed (exit {r['exit_code']})" if r["exit_code"] else ""
        print(f"  {r['label']:34} {r['wall_s']:7.1f}s {r['peak_rss_bytes'] / 1e9:8.2f}GB "
              f"{r['output_bytes'] / 1e9:7.2f}GB{verdict}{failed}")
    by = {r["label"]: r for r in rows}
    for ours, theirs in (("modelport int4 (qdq)", "modelport int4 (ort)"),
                         ("modelport int4 (ort)", "onnxruntime-genai builder int4"),
                         ("modelport f16 (ort)", "onnxruntime-genai builder fp16")):
        if theirs in by and not by[theirs]["exit_code"]:
            print(f"  {ours} / {theirs}: wall {by[ours]['wall_s'] / by[theirs]['wall_s']:.2f}x, "
                  f"RSS {by[ours]['peak_rss_bytes'] / by[theirs]['peak_rss_bytes']:.2f}x")
    print(f"  targets: <= {WALL_TARGET_S:.0f} s and <= {RSS_TARGET_BYTES / 1e9:.1f} GB each; load avg start/end "
          "%.2f / %.2f" % tuple(res["loadavg_1min_start_end"]))


if __name__ == "__main__":
    main()
