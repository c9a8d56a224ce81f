#!/usr/bin/env python3
"""Benchmark: HF safetensors -> MLX 4-bit group 64 on a Llama-3.2-1B-shaped checkpoint (2.47 GB bf16), against
`mlx_lm.convert -q` (the same quantization, same bytes) on the same input in the same run: wall time and peak RSS
(os.wait4 on each child), and whether the two outputs hold the same tensors byte for byte.

Targets (issue 11): modelport's wall <= 1.0x mlx_lm.convert's, peak RSS <= 0.3x the input size.

    .venv/bin/python bench/bench_mlx.py               # table
    .venv/bin/python bench/bench_mlx.py --json        # figures as JSON
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from common import MODELS, OUT, REPO, SHAPE, dir_bytes, ensure_model, load_average, log, machine, modelport_cmd, parser, run

WALL_RATIO_TARGET = 1.0
RSS_INPUT_TARGET = 0.3


def same_tensors(a: Path, b: Path) -> bool:
    """Every tensor of both folders equal in dtype, shape and bytes (headers parsed by modelport, bytes read one
    tensor at a time: numpy has no bfloat16 for safetensors' own reader)."""
    from modelport.formats.safetensors import read_header

    def refs(folder: Path) -> dict:
        return {k: r for f in sorted(folder.glob("model*.safetensors")) for k, r in read_header(f)[0].items()}

    ra, rb = refs(a), refs(b)
    return sorted(ra) == sorted(rb) and all(
        (x.dtype, x.shape) == (rb[n].dtype, rb[n].shape) and x.stored.read() == rb[n].stored.read()
        for n, x in ra.items())


def main() -> None:
    ap = parser(__doc__, keep=True)
    a = ap.parse_args()

    src = ensure_model(MODELS / "l32-1b")
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    load_start = load_average(warn=True)
    jobs = [("modelport", OUT / "mp-4bit", modelport_cmd() + ["convert", str(src), str(OUT / "mp-4bit"), "--to",
                                                              "mlx", "--quant", "4bit", "--group-size", "64"]),
            ("mlx_lm.convert", OUT / "mlx-lm-4bit", [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(src),
                                                     "--mlx-path", str(OUT / "mlx-lm-4bit"), "-q", "--q-bits", "4",
                                                     "--q-group-size", "64"])]
    rows = {}
    for label, out, cmd in jobs:
        os.sync()
        log(f"running {label}")
        wall, rss, _ = run(cmd)
        rows[label] = {"wall_s": wall, "peak_rss_bytes": rss, "output_bytes": dir_bytes(out),
                       "command": " ".join(cmd).replace(str(REPO) + "/", "").replace(sys.executable, "python")}
        log(f"  {wall:.1f} s, peak RSS {rss / 1e9:.2f} GB")
    identical = same_tensors(OUT / "mp-4bit", OUT / "mlx-lm-4bit")
    if not a.keep:
        shutil.rmtree(OUT, ignore_errors=True)
    ours, theirs, size = rows["modelport"], rows["mlx_lm.convert"], dir_bytes(src)
    res = {"input": str(src.relative_to(REPO)), "input_bytes": size, "runs": rows, "identical_tensors": identical,
           "wall_ratio": ours["wall_s"] / theirs["wall_s"], "rss_over_input": ours["peak_rss_bytes"] / size,
           "rss_ratio": ours["peak_rss_bytes"] / theirs["peak_rss_bytes"],
           "loadavg_1min_start_end": [load_start, load_average()], "machine": machine(),
           "date": time.strftime("%Y-%m-%d")}
    res["wall_pass"], res["rss_pass"] = res["wall_ratio"] <= WALL_RATIO_TARGET, res["rss_over_input"] <= RSS_INPUT_TARGET
    if a.json:
        print(json.dumps(res, indent=2))
        return
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    print(f"HF -> MLX 4-bit g64, {SHAPE} ({size / 1e9:.2f} GB bf16), {os.cpu_count()} CPUs, {res['date']}")
    for label, r in rows.items():
        print(f"  {label:16} {r['wall_s']:7.1f}s {r['peak_rss_bytes'] / 1e9:7.2f}GB peak RSS "
              f"{r['output_bytes'] / 1e9:6.2f}GB out")
    print(f"  wall {res['wall_ratio']:.2f}x mlx_lm.convert (target <= {WALL_RATIO_TARGET}x: {ok(res['wall_pass'])}); "
          f"peak RSS {res['rss_over_input']:.2f}x the input (target <= {RSS_INPUT_TARGET}x: {ok(res['rss_pass'])}), "
          f"{res['rss_ratio']:.2f}x mlx_lm.convert's; tensors identical: {identical}")
    print("  load avg start/end %.2f / %.2f" % tuple(res["loadavg_1min_start_end"]))


if __name__ == "__main__":
    main()
