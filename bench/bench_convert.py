#!/usr/bin/env python3
"""Benchmark: HF safetensors -> GGUF f16 on a Llama-3.2-1B-shaped checkpoint (2.47 GB bf16).

Makes the checkpoint with ../shared/bench/make_bench_model.py (once, into bench/models/l32-1b), then in the
same run and on the same input times `cp -r` of the input folder and `modelport convert ... --dtype f16`,
alternately, and measures the converter's peak RSS (os.wait4 on the child).

And, unless --no-llama-cpp, llama.cpp's convert_hf_to_gguf.py --outtype f16 on the same input (fetched as
bench_quantize.py fetches it), the same number of times.

modelport keeps source digests between runs (formats/hashing.py), so each repetition converts twice: "cold", with
the digest cache emptied (the first conversion of a download: the input is hashed too), and "warm" (converting it
again, to another target or after a change of options). The benchmark's own cache folder is used, never the user's.

Targets (issue 10, restated): convert wall <= 1.5x cp + fsync (best of each), <= 0.3x llama.cpp's convert; peak RSS
<= 0.3x the input size.

    .venv/bin/python bench/bench_convert.py            # table
    .venv/bin/python bench/bench_convert.py --json     # figures as JSON
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from common import (MODELS, OUT, REPO, SHAPE, dir_bytes, ensure_model, fetch_convert_script, load_average, log,
                    machine, modelport_cmd, parser, run)

WALL_TARGET = 1.5  # convert wall / (cp + sync) wall
LLAMA_CPP_TARGET = 0.3  # convert wall / llama.cpp's convert_hf_to_gguf.py wall
RSS_TARGET = 0.3  # peak RSS / input bytes


def main() -> None:
    ap = parser(__doc__, keep=True)
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions of each of cp and convert (default 3)")
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp's convert_hf_to_gguf.py")
    a = ap.parse_args()

    src = ensure_model(MODELS / "l32-1b")
    in_bytes = dir_bytes(src)
    OUT.mkdir(parents=True, exist_ok=True)
    copy = OUT / "cp-copy"
    gguf = OUT / "l32-1b-f16.gguf"
    cp = ["cp", "-r", str(src), str(copy)]
    conv = modelport_cmd() + ["convert", str(src), str(gguf), "--dtype", "f16", "--force"]

    def timed_cp() -> float:
        shutil.rmtree(copy, ignore_errors=True)
        os.sync()
        wall, _, _ = run(cp)
        shutil.rmtree(copy, ignore_errors=True)
        return wall

    def timed_cp_sync() -> float:
        """cp, then sync: like for like with modelport, which fsyncs its output before renaming it into place."""
        shutil.rmtree(copy, ignore_errors=True)
        os.sync()
        t0 = time.perf_counter()
        run(cp)
        subprocess.run(["sync"], check=True)
        wall = time.perf_counter() - t0
        shutil.rmtree(copy, ignore_errors=True)
        return wall

    digests = OUT / "digests"
    os.environ["MODELPORT_CACHE"] = str(digests)  # the children's digest cache: the benchmark's, emptied for cold runs

    def timed_convert(cold: bool) -> tuple[float, int]:
        gguf.unlink(missing_ok=True)
        if cold:
            shutil.rmtree(digests, ignore_errors=True)
        os.sync()
        return run(conv)[:2]

    theirs = OUT / "llama.cpp-f16.gguf"
    llama = None if a.no_llama_cpp else [sys.executable, str(fetch_convert_script(OUT / "llama.cpp")), str(src),
                                         "--outtype", "f16", "--outfile", str(theirs)]

    def timed_llama_cpp() -> float:
        theirs.unlink(missing_ok=True)
        os.sync()
        wall = run(llama)[0]
        theirs.unlink(missing_ok=True)
        return wall

    load_start = load_average(warn=True)
    log("warming the page cache (untimed cp)")
    timed_cp()
    cp_walls, cps_walls, conv_walls, cold_walls, rsss, llama_walls = [], [], [], [], [], []
    for i in range(a.reps):
        cp_walls.append(timed_cp())
        cps_walls.append(timed_cp_sync())
        log(f"rep {i + 1}: cp {cp_walls[-1]:.2f} s, cp+sync {cps_walls[-1]:.2f} s")
        w, r = timed_convert(cold=True)
        cold_walls.append(w)
        rsss.append(r)
        log(f"rep {i + 1}: convert, cold {w:.2f} s, peak RSS {r / 1e9:.3f} GB")
        w, r = timed_convert(cold=False)
        conv_walls.append(w)
        rsss.append(r)
        log(f"rep {i + 1}: convert, warm {w:.2f} s, peak RSS {r / 1e9:.3f} GB")
        if llama:
            llama_walls.append(timed_llama_cpp())
            log(f"rep {i + 1}: llama.cpp convert_hf_to_gguf.py {llama_walls[-1]:.2f} s")
    out_bytes = gguf.stat().st_size
    if not a.keep:
        shutil.rmtree(OUT, ignore_errors=True)

    cp_best, conv_best, rss_peak = min(cp_walls), min(conv_walls), max(rsss)
    res = {
        "input": str(src.relative_to(REPO)), "input_bytes": in_bytes, "output_bytes": out_bytes,
        "command": " ".join(["modelport"] + conv[len(modelport_cmd()):]).replace(str(REPO) + "/", ""),
        "cp_wall_s": cp_walls, "convert_wall_s": conv_walls, "convert_peak_rss_bytes": rsss,
        "cp_best_s": cp_best, "convert_best_s": min(conv_walls),
        "cp_median_s": statistics.median(cp_walls), "convert_median_s": statistics.median(conv_walls),
        "cp_sync_wall_s": cps_walls, "cp_sync_best_s": min(cps_walls),
        "wall_ratio_vs_cp_sync": conv_best / min(cps_walls),
        "cold_convert_wall_s": cold_walls, "cold_convert_best_s": min(cold_walls),
        "cold_wall_ratio_vs_cp_sync": min(cold_walls) / min(cps_walls),
        "wall_ratio": conv_best / cp_best,
        "wall_ratio_median": statistics.median(conv_walls) / statistics.median(cp_walls),
        "peak_rss_bytes": rss_peak, "rss_ratio": rss_peak / in_bytes,
        "llama_cpp_wall_s": llama_walls, "llama_cpp_best_s": min(llama_walls, default=None),
        "wall_ratio_vs_llama_cpp": min(cold_walls) / min(llama_walls) if llama_walls else None,
        "llama_cpp_target": LLAMA_CPP_TARGET,
        "wall_target": WALL_TARGET, "rss_target": RSS_TARGET,
        "wall_pass": conv_best / min(cps_walls) <= WALL_TARGET, "rss_pass": rss_peak / in_bytes <= RSS_TARGET,
        "loadavg_1min_start_end": [load_start, load_average()],
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if a.json:
        print(json.dumps(res, indent=2))
        return
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    rows = [
        ("input size", f"{in_bytes / 1e9:.3f} GB"),
        ("output size", f"{out_bytes / 1e9:.3f} GB"),
        ("cp wall (best)", f"{cp_best:.2f} s   median {res['cp_median_s']:.2f}   all [{fmt(cp_walls)}]"),
        ("cp+sync wall (best)", f"{min(cps_walls):.2f} s   all [{fmt(cps_walls)}]"),
        ("convert wall, warm (best)", f"{conv_best:.2f} s   median {res['convert_median_s']:.2f}   "
                                      f"all [{fmt(conv_walls)}]"),
        ("convert / (cp+sync), warm", f"{res['wall_ratio_vs_cp_sync']:.2f}x   target <= {WALL_TARGET}x  "
                                      f"{ok(res['wall_pass'])}"),
        ("convert wall, cold (best)", f"{min(cold_walls):.2f} s   all [{fmt(cold_walls)}]"),
        ("convert / (cp+sync), cold", f"{res['cold_wall_ratio_vs_cp_sync']:.2f}x   (source hashed in the run)"),
        ("convert / cp (best)", f"{res['wall_ratio']:.2f}x   (cp alone: copy_file_range, no fsync)"),
        *([("llama.cpp convert (best)", f"{min(llama_walls):.2f} s   all [{fmt(llama_walls)}]"),
           ("convert, cold / llama.cpp", f"{res['wall_ratio_vs_llama_cpp']:.2f}x   target <= {LLAMA_CPP_TARGET}x  "
                                   f"{ok(res['wall_ratio_vs_llama_cpp'] <= LLAMA_CPP_TARGET)}")] if llama_walls else []),
        ("peak RSS (max)", f"{rss_peak / 1e9:.3f} GB   [{fmt([r / 1e9 for r in rsss])}]"),
        ("RSS / input", f"{res['rss_ratio']:.2f}x   target <= {RSS_TARGET}x  {ok(res['rss_pass'])}"),
    ]
    rows.append(("load avg start/end", "%.2f / %.2f" % tuple(res["loadavg_1min_start_end"])))
    w = max(len(k) for k, _ in rows)
    print(f"modelport convert HF -> GGUF f16, {SHAPE}, {os.cpu_count()} CPUs, {res['date']}")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")


if __name__ == "__main__":
    main()
