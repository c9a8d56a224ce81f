#!/usr/bin/env python3
"""Benchmark: HF safetensors -> Q4_K_M GGUF in one pass, against llama.cpp's two steps, in the same run.

llama.cpp's way: its convert script (convert_hf_to_gguf.py, fetched from the llama-cpp-python source distribution
with `pip download --no-binary :all:` at run time, never committed) to a bf16 GGUF, then llama_model_quantize
(the code behind llama-quantize) bf16 -> Q4_K_M. modelport's way: `modelport convert ... --quant Q4_K_M`.
Prints wall times, peak RSS and the intermediate file's size, and checks the two Q4_K_M files tensor by tensor.

Targets: wall <= 0.6x llama.cpp's two steps; peak RSS <= 0.4x the input size; byte-identical tensor data.

    .venv/bin/python bench/bench_quantize.py [--json]
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from common import OUT, dir_bytes, ensure_model, fetch_convert_script, log, modelport_cmd, parser, run

WALL_TARGET, RSS_TARGET = 0.6, 0.4
QUANTIZE = """
import sys, llama_cpp
from modelport.convert.gguf import quant_plan
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = quant_plan.PRESETS[sys.argv[3]]
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
"""


def compare(ours: Path, theirs: Path) -> dict:
    from modelport.formats import gguf

    a, b = gguf.read(ours), gguf.read(theirs)
    differing = [n for n, t in a.tensors.items()
                 if n not in b.tensors or t.dtype != b.tensors[n].dtype or t.stored.read() != b.tensors[n].stored.read()]
    return {"tensors": len(a.tensors), "same_names": set(a.tensors) == set(b.tensors), "differing": differing}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--quant", default="Q4_K_M")
    a = ap.parse_args()
    src = ensure_model()
    in_bytes = dir_bytes(src)
    OUT.mkdir(parents=True, exist_ok=True)
    script = fetch_convert_script(OUT / "llama.cpp")
    bf16, theirs, ours = OUT / "l32-1b-bf16.gguf", OUT / "llamacpp-q.gguf", OUT / "modelport-q.gguf"
    for f in (bf16, theirs, ours):
        f.unlink(missing_ok=True)

    os.sync()
    log("llama.cpp step 1: convert_hf_to_gguf.py --outtype bf16")
    w1, r1, _ = run([sys.executable, str(script), str(src), "--outtype", "bf16", "--outfile", str(bf16)])
    os.sync()
    log(f"llama.cpp step 2: llama_model_quantize bf16 -> {a.quant}")
    w2, r2, _ = run([sys.executable, "-c", QUANTIZE, str(bf16), str(theirs), a.quant])
    os.sync()
    log(f"modelport: convert --quant {a.quant}")
    w3, r3, _ = run(modelport_cmd() + ["convert", str(src), str(ours), "--quant", a.quant])
    same = compare(ours, theirs)
    res = {
        "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "quant": a.quant,
        "input_bytes": in_bytes, "intermediate_bytes": bf16.stat().st_size, "output_bytes": ours.stat().st_size,
        "llamacpp_convert_s": w1, "llamacpp_quantize_s": w2, "llamacpp_total_s": w1 + w2,
        "llamacpp_peak_rss_bytes": max(r1, r2), "modelport_s": w3, "modelport_peak_rss_bytes": r3,
        "wall_ratio": w3 / (w1 + w2), "rss_ratio": r3 / in_bytes, **same,
    }
    res["wall_pass"], res["rss_pass"] = res["wall_ratio"] <= WALL_TARGET, res["rss_ratio"] <= RSS_TARGET
    res["bytes_pass"] = same["same_names"] and not same["differing"]
    shutil.rmtree(OUT / "sdist", ignore_errors=True)
    for f in (bf16, theirs, ours):
        f.unlink(missing_ok=True)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    print(f"HF -> {a.quant}, Llama-3.2-1B shape, {res['cpus']} CPUs, {res['date']}")
    print(f"  input                      {in_bytes / 1e9:.3f} GB")
    print(f"  llama.cpp convert (bf16)   {w1:.2f} s, peak RSS {r1 / 1e9:.2f} GB, "
          f"intermediate {res['intermediate_bytes'] / 1e9:.2f} GB")
    print(f"  llama.cpp quantize         {w2:.2f} s, peak RSS {r2 / 1e9:.2f} GB")
    print(f"  llama.cpp total            {w1 + w2:.2f} s")
    print(f"  modelport one pass         {w3:.2f} s, peak RSS {r3 / 1e9:.2f} GB, output {res['output_bytes'] / 1e9:.2f} GB")
    print(f"  wall ratio                 {res['wall_ratio']:.2f}x  target <= {WALL_TARGET}  {ok(res['wall_pass'])}")
    print(f"  RSS / input                {res['rss_ratio']:.2f}x  target <= {RSS_TARGET}  {ok(res['rss_pass'])}")
    print(f"  tensor data                {same['tensors'] - len(same['differing'])}/{same['tensors']} identical "
          f"{ok(res['bytes_pass'])}" + (f"; differing: {', '.join(same['differing'])}" if same["differing"] else ""))


if __name__ == "__main__":
    main()
