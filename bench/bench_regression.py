#!/usr/bin/env python3
"""Regression guard: this tree against an earlier revision (default 3a09c30, main before the codec refactor), on the
same inputs in the same run. Every output must be byte-identical, and no conversion slower.

For each input (every tiny sample family the earlier revision knows, and the Llama-3.2-1B-shaped bench checkpoint
with --big) and each job (GGUF f16, GGUF Q4_K_M, HF folder round trip through GGUF, ONNX f16 and int4 from the
builder where the family has one), runs the revision's `modelport convert` and ours, alternating, and compares the
sha256 of every output file and the wall time (best of --reps).

The earlier revision runs from a git worktree installed into bench/.venv-rev (made on first use: a venv whose
packages come from this tree's .venv through a .pth file, with the revision installed editable over them, so only
modelport differs between the two sides).

    .venv/bin/python bench/bench_regression.py               # tiny families, outputs compared
    .venv/bin/python bench/bench_regression.py --big --reps 3  # plus the 1B checkpoint, timed
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from common import BENCH, OUT, REPO, ensure_model, load_average, log, machine, parser, run

REV_VENV = BENCH / ".venv-rev"
TINY = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "starcoder2", "falcon", "mpt",
        "mixtral", "qwen2_moe", "qwen3_moe", "granite")
# (label, convert arguments after SRC DST, destination name, needs the ONNX builder)
JOBS = (
    ("gguf-f16", ["--dtype", "f16"], "m-f16.gguf", False),
    ("gguf-q4_k_m", ["--quant", "Q4_K_M"], "m-q4.gguf", False),
    ("onnx-f16", ["--to", "onnx", "--dtype", "f16"], "m-onnx-f16", True),
    ("onnx-int4", ["--to", "onnx", "--ops", "ort", "--quant", "int4"], "m-onnx-int4", True),
)
BUILDER = ("llama", "mistral", "qwen2", "qwen3")


def rev_python(rev: str) -> Path:
    """bench/.venv-rev with `rev` installed editable from a worktree, sharing every other package with .venv."""
    py = REV_VENV / "bin" / "python"
    tree = BENCH / f".rev-{rev}"
    marker = REV_VENV / f".installed-{rev}"
    if marker.exists():
        return py
    shutil.rmtree(REV_VENV, ignore_errors=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(REV_VENV)], check=True)  # pip, setuptools: ours
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # .pth lines add our site-packages after the venv's own: the revision's dist-info is found first, and the .pth
    # files inside the added folder (our editable install) are not processed, so only the revision's modelport loads
    (site / "shared-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(tree)],
                   check=True, capture_output=True)
    shutil.rmtree(tree / "modelport.egg-info", ignore_errors=True)
    marker.touch()
    return py


def digest(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if path.suffix == ".onnx":
        files.append(path.with_name(path.name + ".data"))
    return {str(f.relative_to(path.parent)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def cli(python: Path) -> list[str]:
    """The side's console script (not `python -c`, which would put the current folder, this tree, on the path)."""
    return [str(python.with_name("modelport"))]


def compare(src: Path, name: str, rev: Path, reps: int, jobs) -> list[dict]:
    rows = []
    for label, args, dst_name, needs_builder in jobs:
        if needs_builder and name not in BUILDER:
            continue
        walls, digests = {"rev": [], "ours": []}, {}
        for _ in range(reps):
            for side, python in (("rev", rev), ("ours", Path(sys.executable))):
                dst = OUT / side / name / dst_name
                dst.parent.mkdir(parents=True, exist_ok=True)
                wall, _, _ = run(cli(python) + ["convert", str(src), str(dst), *args, "--force"])
                walls[side].append(wall)
                digests[side] = digest(dst)
        same = digests["rev"] == digests["ours"]
        rows.append({"input": name, "job": label, "identical": same, "rev_best_s": round(min(walls["rev"]), 3),
                     "ours_best_s": round(min(walls["ours"]), 3),
                     "ratio": round(min(walls["ours"]) / min(walls["rev"]), 3)})
        log(f"{name:12} {label:12} {'identical' if same else 'DIFFERENT'}  rev {min(walls['rev']):.2f} s  ours "
            f"{min(walls['ours']):.2f} s")
        if not same:
            log(json.dumps(digests, indent=1))
    # the HF folder round trip: GGUF f16 -> HF with each side's code
    gguf = OUT / "ours" / name / "m-f16.gguf"
    if gguf.exists():
        for side, python in (("rev", rev), ("ours", Path(sys.executable))):
            run(cli(python) + ["convert", str(gguf), str(OUT / side / name / "back"), "--force"])
        same = digest(OUT / "rev" / name / "back") == digest(OUT / "ours" / name / "back")
        rows.append({"input": name, "job": "gguf->hf", "identical": same})
        log(f"{name:12} {'gguf->hf':12} {'identical' if same else 'DIFFERENT'}")
    return rows


def main() -> None:
    ap = parser(__doc__, keep=True)
    ap.add_argument("--rev", default="3a09c30", help="the revision to compare against (default 3a09c30)")
    ap.add_argument("--big", action="store_true", help="also the Llama-3.2-1B-shaped bench checkpoint (2.5 GB)")
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny sample families")
    ap.add_argument("--reps", type=int, default=1, help="timed repetitions per side and job (best is reported)")
    a = ap.parse_args()
    load_average(warn=True)
    rev = rev_python(a.rev)
    rows = []
    if not a.no_tiny:
        from modelport.samples import tiny

        for name in TINY:
            src = OUT / "inputs" / name
            if not src.exists():
                tiny.make(name, src)
            rows += compare(src, name, rev, 1, JOBS)
    if a.big:
        rows += compare(ensure_model(), "l32-1b", rev, a.reps, JOBS)
    report = {"rev": a.rev, "machine": machine(), "rows": rows,
              "all_identical": all(r["identical"] for r in rows)}
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        for r in rows:
            timing = f"  rev {r['rev_best_s']:.2f} s, ours {r['ours_best_s']:.2f} s ({r['ratio']:.2f}x)" \
                if "ratio" in r else ""
            print(f"{r['input']:12} {r['job']:12} {'identical' if r['identical'] else 'DIFFERENT'}{timing}")
        print("all outputs identical" if report["all_identical"] else "SOME OUTPUTS DIFFER")
    if not a.keep:
        shutil.rmtree(OUT, ignore_errors=True)
    sys.exit(0 if report["all_identical"] else 1)


if __name__ == "__main__":
    main()
