"""`modelport run`: the sample recipe end to end (every output converted and validated in its runtime, manifest,
JUnit and model card), skipping, re-running what a changed source feeds, resuming after SIGKILL, a local Ray
cluster giving the same bytes and figures, hub ids from a pre-populated cache, and malformed recipes refused
before any job starts."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

import modelport

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
MODELPORT = Path(sys.executable).with_name("modelport")
TEXT = "The quick brown fox jumps over the lazy dog. def f(x): return x * 2  # 東京 🦙\n"
# two sources x two targets, one gated: small enough to run four times (local, killed and resumed, Ray, changed)
TWO = """
out = "dist"
[[sources]]
path = "a"
[[sources]]
path = "b"
[[targets]]
format = "gguf"
quant = "Q8_0"
gate = { text_file = "text.txt" }
[[targets]]
format = "safetensors"
dtype = "f16"
"""
TIMING = ("wall_s", "peak_rss_bytes")  # measurements of the machine, not of the outputs


def cli(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(MODELPORT), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)


def files(out: Path) -> dict[str, str]:
    """sha256 of every file under `out` but the run's own records, by relative path."""
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", "junit.xml")}


def figures(manifest: dict) -> dict:
    """The manifest without timings and the per-source stat cache (mtimes): what must agree between runs."""
    jobs = {n: {k: v for k, v in j.items() if k not in TIMING} for n, j in manifest["jobs"].items()}
    sources = {n: {f: {"sha256": v["sha256"], "bytes": v["bytes"]} for f, v in s["files"].items()}
               for n, s in manifest["sources"].items()}
    return {"jobs": jobs, "sources": sources, "tool": manifest["tool"]}


def two_sources(root: Path, llama: Path) -> Path:
    root.mkdir()
    for name in ("a", "b"):
        if not (root.parent / "src" / name).exists():
            shutil.copytree(llama, root.parent / "src" / name)
        (root / name).symlink_to(root.parent / "src" / name)
    (root / "text.txt").write_text(TEXT)
    (root / "recipe.toml").write_text(TWO)
    return root / "recipe.toml"


@pytest.fixture(scope="module")
def sample(checkpoints, tmp_path_factory) -> Path:
    """samples/recipe.toml run once by the CLI, beside a copy of the tiny llama `make demo` makes."""
    root = tmp_path_factory.mktemp("sample")
    shutil.copy(SAMPLES / "recipe.toml", root)
    shutil.copy(SAMPLES / "mixed.txt", root)
    shutil.copytree(checkpoints("llama"), root / "out" / "tiny-llama")
    r = cli("run", root / "recipe.toml", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    return root


@pytest.fixture(scope="module")
def reference_run(checkpoints, tmp_path_factory) -> Path:
    """The two-source recipe run locally, uninterrupted: the bytes and figures the other runs must give."""
    recipe = two_sources(tmp_path_factory.mktemp("two") / "local", checkpoints("llama"))
    r = cli("run", recipe, "--jobs", "2")
    assert r.returncode == 0, r.stderr
    return recipe


def test_the_sample_recipe_exports_validates_and_records_everything(sample):
    out = sample / "out" / "release"
    manifest = json.loads((out / "manifest.json").read_text())
    expected = {"tiny-llama-F16.gguf", "tiny-llama-Q8_0.gguf", "tiny-llama-Q4_K_M.gguf", "tiny-llama-onnx-int4",
                "tiny-llama-f16"}
    assert set(manifest["jobs"]) == expected
    assert manifest["tool"]["version"] == modelport.__version__
    assert set(manifest["sources"]["tiny-llama"]["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    runtimes = set()
    for name, job in manifest["jobs"].items():
        assert job["status"] == "ok" and job["validate"]["passed"], (name, job)
        assert job["peak_rss_bytes"] > 0 and job["wall_s"] > 0
        path = out / "tiny-llama" / name
        base = path if path.is_dir() else path.parent
        for rel, f in job["outputs"].items():  # every file recorded is there, with the recorded bytes
            assert hashlib.sha256((base / rel).read_bytes()).hexdigest() == f["sha256"]
        runtimes.add(job["validate"]["candidate_type"])
        info = json.loads(cli("inspect", path, "--json").stdout)  # and reads back as what was asked for
        assert info["format"] == job["format"]
    assert runtimes == {"F16", "Q8_0", "Q4_K_M", "INT4"}
    suite = ET.parse(out / "junit.xml").getroot()
    cases = suite.findall("testcase")
    assert len(cases) == 5 * 5 and suite.get("failures") == "0" and suite.get("errors") == "0"
    assert {c.get("name") for c in cases if c.get("classname") == "modelport.run"} == expected
    from huggingface_hub.repocard import metadata_load

    card = out / "tiny-llama" / "README.md"
    meta = metadata_load(card)
    assert meta["base_model"] == "tiny-llama" and meta["quantized_by"] == "modelport"
    assert {"gguf", "onnx", "safetensors", "Q4_K_M", "int4"} <= set(meta["tags"])
    table = [line for line in card.read_text().splitlines() if line.startswith("| tiny-llama")]
    assert len(table) == 5 and all("| ok |" in row for row in table)


def test_a_second_run_skips_everything(sample):
    outputs = sample / "out" / "release" / "tiny-llama"
    before = {p: p.stat().st_mtime_ns for p in outputs.rglob("*") if p.is_file() and p.name != "README.md"}
    for _ in range(2):  # the first one imports the codecs and runtimes' modules too
        t0 = time.perf_counter()
        manifest = modelport.run(sample / "recipe.toml")
        assert manifest.ran == [] and len(manifest.skipped) == 5 and manifest.passed
    print(f"run of the sample recipe with every job up to date: {time.perf_counter() - t0:.2f} s in-process")
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing rewritten


def test_the_dry_run_plans_each_job_with_its_needs(sample):
    r = cli("run", sample / "recipe.toml", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert [p["action"] for p in plan] == ["skip"] * 5
    sizes = {p["name"]: p["estimate"]["disk_bytes"] for p in plan}
    assert sizes["tiny-llama-Q4_K_M.gguf"] < sizes["tiny-llama-F16.gguf"]
    assert all(p["estimate"]["memory_bytes"] > 0 and p["estimate"]["threads"] >= 1 for p in plan)


def test_a_changed_source_reruns_only_its_jobs(reference_run, tmp_path):
    root = reference_run.parent
    before = json.loads((root / "dist" / "manifest.json").read_text())
    work = tmp_path / "w"
    shutil.copytree(root, work, symlinks=False)  # its own sources (mtimes kept), so the reference stays as it is
    config = json.loads((work / "a" / "config.json").read_text())
    (work / "a" / "config.json").write_text(json.dumps({**config, "license": "apache-2.0"}))
    (work / "b" / "config.json").touch()  # a new mtime, same bytes: hashed again, found equal, skipped
    manifest = modelport.run(work / "recipe.toml")
    assert sorted(manifest.ran) == ["a-Q8_0.gguf", "a-f16"] and sorted(manifest.skipped) == ["b-Q8_0.gguf", "b-f16"]
    assert manifest.jobs["b-f16"] == before["jobs"]["b-f16"]
    from huggingface_hub.repocard import metadata_load

    assert metadata_load(work / "dist" / "a" / "README.md")["license"] == "apache-2.0"  # copied from the source


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_outputs(reference_run, tmp_path):
    root = two_sources(tmp_path / "killed", reference_run.parent.parent / "src" / "a").parent
    manifest = root / "dist" / "manifest.json"
    proc = subprocess.Popen([str(MODELPORT), "run", str(root / "recipe.toml"), "--jobs", "2"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr", "w"), start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and json.loads(manifest.read_text())["jobs"]:
            break
        time.sleep(0.2)
    time.sleep(2)  # into the next job
    assert proc.poll() is None, f"the run ended before it could be killed: {(tmp_path / 'stderr').read_text()}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # the children follow their parent (PR_SET_PDEATHSIG)
    done = json.loads(manifest.read_text())["jobs"]
    assert 1 <= len(done) < 4
    ref_out = reference_run.parent / "dist"
    reference = files(ref_out)
    for rel, digest in files(root / "dist").items():  # what is there at a final name is whole
        if ".partial-" not in rel and not rel.endswith("README.md"):
            assert reference[rel] == digest, rel
    r = cli("run", root / "recipe.toml", "--jobs", "2")  # the same share of CPUs as the reference's jobs
    assert r.returncode == 0, r.stderr
    assert not [p for p in (root / "dist").rglob("*") if ".partial-" in p.name]
    assert files(root / "dist") == reference
    assert figures(json.loads(manifest.read_text())) == figures(json.loads((ref_out / "manifest.json").read_text()))


def test_a_local_ray_cluster_gives_the_same_bytes_and_figures(reference_run, tmp_path):
    ray = pytest.importorskip("ray")
    root = two_sources(tmp_path / "ray", reference_run.parent.parent / "src" / "a").parent
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        manifest = modelport.run(root / "recipe.toml", jobs=2, ray="")
    finally:
        ray.shutdown()
    assert manifest.passed and len(manifest.ran) == 4
    ref_out = reference_run.parent / "dist"
    assert files(root / "dist") == files(ref_out)
    assert figures(manifest.data) == figures(json.loads((ref_out / "manifest.json").read_text()))


def test_without_ray_installed_ray_runs_exit_4_naming_the_extra(checkpoints, tmp_path):
    blocker = tmp_path / "no-ray" / "ray"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no ray here')\n")
    (tmp_path / "m").symlink_to(checkpoints("llama"))
    (tmp_path / "r.toml").write_text("[[sources]]\npath = 'm'\n[[targets]]\nformat = 'gguf'\nquant = 'Q8_0'\n")
    r = cli("run", tmp_path / "r.toml", "--ray", env={"PYTHONPATH": str(blocker.parent)})
    assert r.returncode == 4 and r.stderr.strip().splitlines() == ["modelport: --ray needs Ray: pip install "
                                                                   "'modelport[ray]'"]
    assert not (tmp_path / "dist").exists()


def hub_cache(home: Path, repo: str, folder: Path) -> str:
    """`folder` as huggingface_hub's documented cache layout under HF_HOME: blobs by content hash, a snapshot of
    symlinks per commit, refs/main naming the commit."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    base = home / "hub" / f"models--{repo.replace('/', '--')}"
    (base / "blobs").mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        blob = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, base / "blobs" / blob)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    return commit


def test_hub_ids_convert_from_the_cache_offline(checkpoints, tmp_path):
    home = tmp_path / "hf"
    commit = hub_cache(home, "tiny-org/tiny-llama", checkpoints("llama"))
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    local = tmp_path / "local.gguf"
    modelport.convert(checkpoints("llama"), local, quant="Q8_0")
    for i, ref in enumerate(("tiny-org/tiny-llama", f"tiny-org/tiny-llama@{commit}")):
        r = cli("convert", ref, tmp_path / f"{i}.gguf", "--quant", "Q8_0", env=env)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / f"{i}.gguf").read_bytes() == local.read_bytes()  # the same files, the same bytes
    (tmp_path / "r.toml").write_text("[[sources]]\nhub = 'tiny-org/tiny-llama'\n"
                                     "[[targets]]\nformat = 'safetensors'\ndtype = 'f16'\n")
    r = cli("run", tmp_path / "r.toml", env=env)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "dist" / "manifest.json").read_text())
    assert manifest["sources"]["tiny-llama"]["revision"] == commit
    from huggingface_hub.repocard import metadata_load

    assert metadata_load(tmp_path / "dist" / "tiny-llama" / "README.md")["base_model"] == "tiny-org/tiny-llama"
    r = cli("convert", "tiny-org/tiny-llama@v9.9", tmp_path / "x.gguf", env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "v9.9" in r.stderr
    assert not (tmp_path / "x.gguf").exists()
    r = cli("convert", "tiny-org/absent", tmp_path / "y.gguf", env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "tiny-org/absent" in r.stderr


class GatedHub(http.server.BaseHTTPRequestHandler):
    """What the hub answers for a gated repo without accepted terms: 403 with X-Error-Code GatedRepo."""

    def do_GET(self):
        self.send_response(403)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to model org/gated is restricted.")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def test_a_gated_repo_is_one_line_exit_2(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GatedHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = cli("convert", "org/gated", tmp_path / "g.gguf", env={
            "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"})
    finally:
        server.shutdown()
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "modelport: org/gated: gated repo: accept its terms on the hub and log in (HF_TOKEN)"]


BAD = {
    "unknown key": ("colour = 'red'\n", "colour: unknown key"),
    "unknown target key": ("[[targets]]\nformat = 'gguf'\nquantize = 'Q8_0'\n", "targets[0].quantize: unknown key"),
    "unknown format": ("[[targets]]\nformat = 'ggml'\n", "targets[0].format: unknown format 'ggml'"),
    "unknown quant": ("[[targets]]\nformat = 'gguf'\nquant = 'Q9_9'\n", "targets[0].quant: unknown quantization"),
    "onnx quant": ("[[targets]]\nformat = 'onnx'\nquant = 'int3'\n", "targets[0].quant: --quant int3"),
    "gate key": ("[[targets]]\nformat = 'gguf'\ngate = { max_kld = 1 }\n", "targets[0].gate.max_kld: unknown key"),
}


def malformed(tmp_path: Path, llama: Path, case: str) -> Path:
    (tmp_path / "m").symlink_to(llama)
    body = BAD[case][0]
    head = "[[sources]]\npath = 'm'\n" + ("" if "[[targets]]" in body else "[[targets]]\nformat = 'gguf'\n")
    (tmp_path / "r.toml").write_text(body + head if body.startswith("colour") else head + body)
    return tmp_path / "r.toml"


@pytest.mark.parametrize("case", list(BAD))
def test_a_malformed_recipe_fails_before_any_job(case, checkpoints, tmp_path):
    from modelport.pipeline.recipe import RecipeError

    with pytest.raises(RecipeError) as e:
        modelport.run(malformed(tmp_path, checkpoints("llama"), case))
    assert BAD[case][1] in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == 2
    assert not (tmp_path / "dist").exists()


def test_a_malformed_recipe_is_one_line_exit_2(checkpoints, tmp_path):
    r = cli("run", malformed(tmp_path, checkpoints("llama"), "unknown quant"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and BAD["unknown quant"][1] in lines[0], r.stderr
    assert not (tmp_path / "dist").exists()


def test_a_gate_on_a_format_without_a_runtime_is_a_recipe_error(checkpoints, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(Path(__file__).parent / "plugins" / "modelport-npz")], check=True,
                   capture_output=True)
    (tmp_path / "m").symlink_to(checkpoints("llama"))
    (tmp_path / "r.toml").write_text("[[sources]]\npath = 'm'\n[[targets]]\nformat = 'npz'\ngate = true\n")
    r = cli("run", tmp_path / "r.toml", env={"PYTHONPATH": str(site)})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "targets[0].gate: npz has no runtime" in lines[0], r.stderr
    assert not (tmp_path / "dist").exists()
