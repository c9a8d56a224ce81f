#!/usr/bin/env python3
"""Benchmark: HF safetensors -> compressed-tensors W4A16 (group 128) on the Llama-3.2-1B-shaped checkpoint (2.47 GB
bf16), the path to vLLM / SGLang / TGI.

Makes the checkpoint with ../shared/bench/make_bench_model.py (once, into bench/models/l32-1b), then measures, in
the same run, the converter's wall time and peak RSS (os.wait4 on the child) against the input size, and the peak
RSS of a child that only imports what the writer imports (torch, transformers, compressed-tensors): the floor no
streaming can go under.

Target: peak RSS <= 0.3x the input size.

    .venv/bin/python bench/bench_serving.py            # table
    .venv/bin/python bench/bench_serving.py --json     # figures as JSON
"""
from __future__ import annotations

import json
import shutil
import sys

from common import MODELS, OUT, SHAPE, dir_bytes, ensure_model, load_average, log, machine, modelport_cmd, parser, run

RSS_TARGET = 0.3  # peak RSS / input bytes


def main() -> None:
    ap = parser(__doc__, keep=True)
    a = ap.parse_args()

    src = ensure_model(MODELS / "l32-1b")
    in_bytes = dir_bytes(src)
    OUT.mkdir(parents=True, exist_ok=True)
    dst = OUT / "l32-1b-w4a16"
    load_start = load_average(warn=True)
    _, floor, _ = run([sys.executable, "-c", "import modelport.convert.serving.write, modelport.cli"])
    log(f"imports alone: peak RSS {floor / 1e9:.3f} GB")
    shutil.rmtree(dst, ignore_errors=True)
    wall, rss, _ = run(modelport_cmd() + ["convert", str(src), str(dst), "--to", "compressed-tensors", "--force"])
    out_bytes = dir_bytes(dst)
    log(f"convert: {wall:.1f} s, peak RSS {rss / 1e9:.3f} GB")
    figures = {"shape": SHAPE, "input_bytes": in_bytes, "output_bytes": out_bytes, "convert_wall_s": round(wall, 2),
               "peak_rss_bytes": rss, "imports_rss_bytes": floor, "rss_ratio": round(rss / in_bytes, 4),
               "rss_target": RSS_TARGET, "rss_ok": rss / in_bytes <= RSS_TARGET,
               "load_average": [round(load_start, 2), round(load_average(), 2)], "machine": machine()}
    if not a.keep:
        shutil.rmtree(dst, ignore_errors=True)
    if a.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"input {in_bytes / 1e9:.2f} GB -> W4A16 g128 {out_bytes / 1e9:.2f} GB in {wall:.1f} s")
    print(f"peak RSS {rss / 1e9:.3f} GB = {rss / in_bytes:.3f}x input (target <= {RSS_TARGET}x: "
          f"{'ok' if figures['rss_ok'] else 'MISSED'}); imports alone {floor / 1e9:.3f} GB")


if __name__ == "__main__":
    main()
