#!/usr/bin/env python3
"""Benchmark: `modelport validate` of a Llama-shaped checkpoint (1B: Llama 3.2; 8B: Llama 3.1) against its Q4_K_M
GGUF with the built-in texts, run four ways in one session, one after another: the reference held in fp32
(`--no-stream`), streamed from its checkpoint (`--stream`), saved once (`--save-reference`, streamed) and the
candidate checked against the saved file. Then `modelport diff` of the checkpoint against the GGUF. Prints wall time
and peak RSS of each (the child's own, from os.wait4), the ratios against the held run, and whether every figure
of each run equals the held run's. The checkpoint has random weights, so the Q4_K_M gates are expected to fail
(exit 1); the time, memory and equal figures are what this measures. The 8B held run is skipped when it would not
fit (validate refuses it up front: exit 2).

    .venv/bin/python bench/bench_validate.py [--shape 1b|8b] [--json]
"""
from __future__ import annotations

import json
import subprocess

from common import MODELS, OUT, ensure_model, load_average, log, machine, modelport_cmd, parser, run

SHAPES = {"1b": ("l32-1b", "llama3.2-1b"), "8b": ("l31-8b", "llama3.1-8b")}


def validate(name: str, args: list[str], ok=(0, 1, 2)) -> dict:
    cmd = [*modelport_cmd(), "validate", *args, "--json"]
    log(" ".join(cmd))
    report = OUT / f"validate-{name}.json"
    subprocess.run(["sync"], check=True)
    wall, peak, code = run(cmd, ok=ok, stdout=report)  # 1: a gate failed, still a finished run
    rep = json.loads(report.read_text()) if code in (0, 1) else None
    log(f"  {name}: {wall:.1f} s, {peak / 1e9:.2f} GB peak RSS, exit {code}")
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(peak / 1e9, 2), "exit": code, "report": rep}


def same_figures(a: dict | None, b: dict | None) -> bool | None:
    if a is None or b is None:
        return None
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    return strip(a) == strip(b)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--quant", default="Q4_K_M")
    a = ap.parse_args()
    folder, shape = SHAPES[a.shape]
    hf = ensure_model(MODELS / folder, shape)
    OUT.mkdir(parents=True, exist_ok=True)
    cand = OUT / f"{folder}-{a.quant}.gguf"
    if not cand.exists():
        log(f"quantizing {hf.name} -> {cand.name}")
        subprocess.run([*modelport_cmd(), "convert", str(hf), str(cand), "--quant", a.quant], check=True)
    ref = OUT / f"{folder}.mpref"
    load_start = load_average(warn=True)
    runs = {"held": validate("held", [str(hf), str(cand), "--no-stream"]),
            "streamed": validate("streamed", [str(hf), str(cand), "--stream"]),
            "save_reference": validate("save", [str(hf), "--save-reference", str(ref), "--stream", "--force"],
                                       ok=(0,)),
            "saved": validate("saved", [str(ref), str(cand)])}
    runs["save_reference"]["reference_gb"] = round(ref.stat().st_size / 1e9, 3)
    runs["save_reference"].pop("report")
    cmd = [*modelport_cmd(), "diff", str(hf), str(cand), "--json"]
    log(" ".join(cmd))
    wall, peak, _ = run(cmd, stdout=OUT / "diff.json")
    runs["diff"] = {"wall_s": round(wall, 2), "peak_rss_gb": round(peak / 1e9, 2)}
    held = runs["held"]
    for name in ("streamed", "saved"):
        r = runs[name]
        r["same_figures_as_held"] = same_figures(held["report"], r["report"])
        if held["report"] and r["report"]:
            ka, kb = held["report"]["overall"]["kl_mean"], r["report"]["overall"]["kl_mean"]
            r["kl_mean_rel_diff"] = abs(ka - kb) / abs(ka)
        if held["exit"] in (0, 1):
            r["rss_vs_held"] = round(r["peak_rss_gb"] / held["peak_rss_gb"], 3)
            r["wall_vs_held"] = round(r["wall_s"] / held["wall_s"], 3)
    base = next(r["report"] for r in runs.values() if r.get("report"))
    result = {"shape": shape, "candidate": cand.name, "machine": machine(),
              "load_average": [load_start, load_average()], "positions": base["overall"]["positions"],
              "overall": base["overall"], "failed_gates": base["failed_gates"],
              "runs": {k: {x: y for x, y in v.items() if x != "report"} for k, v in runs.items()}}
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"validate {hf.name} vs {cand.name}: {result['positions']} positions, KL mean "
          f"{base['overall']['kl_mean']:.6g}, top-1 {base['overall']['top1']:.3f} "
          f"({', '.join(base['failed_gates']) or 'pass'}); load {load_start:.2f} -> {result['load_average'][1]:.2f}")
    for name, r in result["runs"].items():
        extra = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("wall_s", "peak_rss_gb"))
        print(f"  {name:15} {r['wall_s']:8.1f} s  {r['peak_rss_gb']:6.2f} GB peak RSS  {extra}")


if __name__ == "__main__":
    main()
