"""What the benchmarks share: the Llama-3.2-1B-shaped checkpoint (made with ../shared/bench/make_bench_model.py),
running a command as a child with its wall time and peak RSS, and the modelport command line."""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MAKER = REPO.parent / "shared" / "bench" / "make_bench_model.py"
MODELS = BENCH / "models"
OUT = BENCH / "out"
SHAPE = "llama3.2-1b"
PAGE = os.sysconf("SC_PAGE_SIZE")
# modelport's children hash their sources in every run (no digest cache, formats/hashing.py), as on a first
# conversion; bench_convert times both ways with a cache of its own
os.environ.setdefault("MODELPORT_CACHE", "off")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parser(doc: str, keep: bool = False) -> argparse.ArgumentParser:
    """Every benchmark's command line: its docstring as help, --json, and --keep where it leaves outputs."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    if keep:
        ap.add_argument("--keep", action="store_true", help="keep bench/out/ afterwards")
    return ap


def load_average(warn: bool = False) -> float:
    """The 1-minute load average; with `warn`, say on stderr when other work would skew the timings."""
    load = os.getloadavg()[0]
    if warn and load > 0.5:
        log(f"warning: 1-minute load average is {load:.2f}; other work on the machine skews the timings")
    return load


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def ensure_model(path: Path = MODELS / "l32-1b", shape: str = SHAPE) -> Path:
    if (path / "config.json").exists() and any(path.glob("*.safetensors")):
        return path
    if not MAKER.exists():
        sys.exit(f"bench: {MAKER} not found")
    tmp = path.with_name(path.name + ".partial-make")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"making {path} with {MAKER.name} --shape {shape} (a minute or two per GB)")
    subprocess.run([sys.executable, str(MAKER), "--shape", shape, "--out", str(tmp)], check=True)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def modelport_cmd() -> list[str]:
    script = Path(sys.executable).with_name("modelport")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from modelport.cli import main; sys.exit(main())"]


def _tree_rss(pid: int) -> int:
    """Resident bytes of pid and its descendants now (Linux /proc; 0 once gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def run(cmd: list[str], ok: tuple[int, ...] = (0,), stdout: Path | None = None) -> tuple[float, int, int]:
    """Run cmd (stdout to a file when given); return (wall seconds, peak RSS bytes, exit code). The peak is the
    larger of the child's own (os.wait4: not the largest of every child this process ever had) and the sum over the
    child and its descendants (validate's isolated runtimes, the references' own workers), sampled every 50 ms."""
    t0 = time.perf_counter()
    with open(stdout or os.devnull, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        tree, done = [0], threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                tree[0] = max(tree[0], _tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        err = proc.stderr.read().decode(errors="replace")
        done.set()
        sampler.join()
        _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in ok:
        sys.exit(f"bench: {' '.join(cmd)} failed ({code}):\n{err[-3000:]}")
    return wall, max(ru.ru_maxrss * 1024, tree[0]), code  # ru_maxrss is KiB on Linux


def fetch_convert_script(dest: Path) -> Path:
    """convert_hf_to_gguf.py with the conversion/ package and gguf-py it imports, from the sdist of the installed
    llama-cpp-python (the same llama.cpp our quantizer comes from)."""
    script = dest / "convert_hf_to_gguf.py"
    if script.exists():
        return script
    ver = version("llama-cpp-python")
    sdist = dest.parent / "sdist"
    log(f"fetching the llama-cpp-python {ver} source distribution for llama.cpp's convert script")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={ver}", "-d", str(sdist)], check=True)
    with tarfile.open(next(sdist.glob("llama_cpp_python-*.tar.gz"))) as tar:
        prefix = f"llama_cpp_python-{ver}/vendor/llama.cpp/"
        wanted = [m for m in tar.getmembers() if m.name.startswith(prefix) and
                  m.name[len(prefix):].split("/")[0] in ("convert_hf_to_gguf.py", "conversion", "gguf-py")]
        for m in wanted:
            m.name = m.name[len(prefix):]
        tar.extractall(dest, members=wanted, filter="data")
    return script
