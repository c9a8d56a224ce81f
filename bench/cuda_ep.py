#!/usr/bin/env python3
"""Device check (issue 13): modelport's ONNX exports on onnxruntime's CUDA execution provider against its CPU one.

Standalone, for a machine with an NVIDIA GPU and onnxruntime-gpu (numpy and onnxruntime only; modelport need not be
installed there). Make the exports here, carry them over, run:

    modelport convert samples/out/tiny-llama EXPORTS/f16 --to onnx --target cuda
    modelport convert samples/out/tiny-llama EXPORTS/int4 --to onnx --target cuda --quant int4
    modelport convert samples/out/tiny-llama EXPORTS/portable --to onnx --target cuda --ops portable
    python3 bench/cuda_ep.py EXPORTS [--ort DIR_WITH_onnxruntime_gpu]   # figures as JSON, also $OUT/cuda.json

Per export: the prompt, then greedy tokens one at a time through the KV cache on both providers; max |logit diff|,
mean KL (CPU || CUDA), argmax agreement, the greedy tokens, and where onnxruntime placed each node (its verbose
session log: a contrib op that falls back to the CPU shows there)."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

STEPS = 8  # greedy tokens after the prompt
PLACED = re.compile(r"(?:Node\(s\)|All nodes) placed on \[(\w+)\]\. Number of nodes: (\d+)")


def _feed(sess, np, ids, past, total):
    f = {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64),
         "position_ids": np.arange(total - ids.shape[1], total, dtype=np.int64)[None]}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            dt = np.float16 if "float16" in i.type else np.float32
            f[i.name] = past.get(i.name, np.zeros((1, i.shape[1], 0, i.shape[3]), dt))
    return {k: v for k, v in f.items() if k in {i.name for i in sess.get_inputs()}}


def _generate(sess, np, prompt):
    names = [o.name for o in sess.get_outputs()]
    ids, past, total, logits, tokens = prompt, {}, prompt.shape[1], [], []
    for _ in range(STEPS + 1):
        res = dict(zip(names, sess.run(None, _feed(sess, np, ids, past, total))))
        logits.append(res["logits"][0].astype(np.float32))
        past = {k.replace("present", "past_key_values"): v for k, v in res.items() if k.startswith("present")}
        tokens.append(int(logits[-1][-1].argmax()))
        ids, total = np.array([[tokens[-1]]], np.int64), total + 1
    return np.concatenate(logits), tokens


def _mean_kl(np, p_logits, q_logits):
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    lp, lq = log_softmax(p_logits.astype(np.float64)), log_softmax(q_logits.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def placement(model: str, ort_dir: str | None) -> dict:
    """Node counts per provider and the operator types onnxruntime left on the CPU, from a child's verbose log."""
    code = ("import sys; sys.path[:0] = sys.argv[2:]; import onnxruntime as ort; "
            "getattr(ort, 'preload_dlls', lambda: None)(); so = ort.SessionOptions(); so.log_severity_level = 0; "
            "ort.InferenceSession(sys.argv[1], so, providers=['CUDAExecutionProvider', 'CPUExecutionProvider'])")
    log = subprocess.run([sys.executable, "-c", code, model, *([ort_dir] if ort_dir else [])], capture_output=True,
                         text=True).stderr.splitlines()
    counts, on_cpu, current = {}, set(), None
    for line in log:
        m = PLACED.search(line)
        if m:
            current = m.group(1)
            counts[current] = int(m.group(2))
        elif current == "CPUExecutionProvider" and "VerifyEachNodeIsAssignedToAnEp]   " in line:
            on_cpu.add(line.split("]   ", 1)[1].split(" (")[0])
    return {"nodes": counts, "op_types_on_cpu": sorted(on_cpu)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exports", help="a folder of export folders, each holding model.onnx")
    ap.add_argument("--ort", help="a folder holding onnxruntime-gpu's `onnxruntime` package (an unpacked wheel)")
    a = ap.parse_args()
    if a.ort:
        sys.path.insert(0, a.ort)
    import numpy as np
    import onnxruntime as ort

    getattr(ort, "preload_dlls", lambda: None)()  # CUDA and cuDNN from the nvidia-* wheels, where they are
    prompt = np.random.default_rng(0).integers(0, 128000, size=(1, 24)).astype(np.int64)
    out = {"onnxruntime": ort.__version__, "available": ort.get_available_providers()}
    for name in sorted(os.listdir(a.exports)):
        model = os.path.join(a.exports, name, "model.onnx")
        cpu = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        cuda = ort.InferenceSession(model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        lc, tc = _generate(cpu, np, prompt)
        lg, tg = _generate(cuda, np, prompt)
        out[name] = {"providers": cuda.get_providers(), "max_abs_logit_diff": float(np.abs(lc - lg).max()),
                     "max_abs_logit": float(np.abs(lc).max()), "mean_kl_cpu_vs_cuda": _mean_kl(np, lc, lg),
                     "argmax_agree": float((lc.argmax(-1) == lg.argmax(-1)).mean()),
                     "greedy_equal": tc == tg, "greedy_tokens": tg, **placement(model, a.ort)}
    print(json.dumps(out, indent=1))
    with open(os.path.join(os.environ.get("OUT", "."), "cuda.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
