#!/usr/bin/env python3
"""Benchmark: `modelport validate` of the Llama-3.2-1B-shaped checkpoint against its Q4_K_M GGUF with the built-in
texts (transformers fp32 reference, llama.cpp candidate). Prints wall time, peak RSS and the report's overall figures.
The checkpoint has random weights, so the gates are expected to fail at Q4_K_M (exit 1); the time and memory are
what this measures.

    .venv/bin/python bench/bench_validate.py [--json]
"""
from __future__ import annotations

import argparse
import json
import subprocess

from common import OUT, ensure_model, log, modelport_cmd, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quant", default="Q4_K_M")
    a = ap.parse_args()
    hf = ensure_model()
    OUT.mkdir(parents=True, exist_ok=True)
    cand = OUT / f"l32-1b-{a.quant}.gguf"
    if not cand.exists():
        log(f"quantizing {hf.name} -> {cand.name}")
        subprocess.run([*modelport_cmd(), "convert", str(hf), str(cand), "--quant", a.quant], check=True)
    cmd = [*modelport_cmd(), "validate", str(hf), str(cand), "--json"]
    log(" ".join(cmd))
    report = OUT / "validate.json"
    wall, peak, code = run(cmd, ok=(0, 1), stdout=report)  # 1: a gate failed, still a finished run
    rep = json.loads(report.read_text())
    result = {"wall_s": round(wall, 2), "peak_rss_gb": round(peak / 1e9, 2), "exit": code,
              "tokens": rep["overall"]["positions"], "overall": rep["overall"], "failed_gates": rep["failed_gates"]}
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"validate {hf.name} vs {cand.name}: {result['wall_s']} s wall, {result['peak_rss_gb']} GB peak RSS, "
              f"{result['tokens']} positions, KL mean {rep['overall']['kl_mean']:.3g}, "
              f"top-1 {rep['overall']['top1']:.3f}, "
              f"exit {code} ({', '.join(rep['failed_gates']) or 'pass'})")


if __name__ == "__main__":
    main()
