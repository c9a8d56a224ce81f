"""A format and a family from outside the tree (tests/plugins/modelport-npz, a package with its own pyproject):
installed into a folder of its own and put on the path of a modelport child process, it shows up in `modelport
formats` and `archs`, converts both ways with the other formats, inspects, and its bad input gets the same one-line
errors and exit codes. No line of modelport changes for it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelport.validators.metrics import logit_parity
from modelport.validators.runtimes import LlamaCpp, Transformers

PLUGIN = Path(__file__).parent / "plugins" / "modelport-npz"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """The plugin installed as pip installs any package (a wheel's files and dist-info with its entry points)."""
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(PLUGIN)], check=True, capture_output=True)
    return site


def cli(site: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    exe = Path(sys.executable).with_name("modelport")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env)


def test_the_plugin_is_listed(plugin_path):
    formats = json.loads(cli(plugin_path, "formats", "--json").stdout)
    assert {"name": "npz", "extensions": [], "description": "toy plugin: a folder of config.json, tokenizer files "
            "and tensors.npz", "options": ["--dtype"], "runtime": None} in formats
    families = {r["name"]: r for r in json.loads(cli(plugin_path, "archs", "--json").stdout)}
    assert families["toyllama"]["formats"]["gguf"]["arch"] == "llama"
    assert "npz->gguf" in families["llama"]["paths"] and "gguf->npz" in families["toyllama"]["paths"]
    r = cli(plugin_path, "convert", "--help")
    assert "[gguf, onnx, safetensors, npz]" in " ".join(r.stdout.split()) or "npz" in r.stdout


def test_converts_both_ways_with_the_other_formats(plugin_path, checkpoints, tmp_path):
    """HF -> npz -> GGUF runs in llama.cpp as transformers runs the source; GGUF -> npz -> HF gives the source's
    tensors back bit for bit."""
    src = checkpoints("llama")
    for args in (("convert", src, tmp_path / "m", "--to", "npz"),
                 ("convert", tmp_path / "m", tmp_path / "m.gguf", "--dtype", "f32"),
                 ("convert", tmp_path / "m.gguf", tmp_path / "back-npz", "--to", "npz"),
                 ("convert", tmp_path / "back-npz", tmp_path / "back")):
        r = cli(plugin_path, *args)
        assert r.returncode == 0, r.stderr
    info = json.loads(cli(plugin_path, "inspect", tmp_path / "m", "--json").stdout)
    assert info["format"] == "npz" and info["arch"] == "llama" and info["parameters"] > 0
    from safetensors.numpy import load_file

    ours, theirs = load_file(tmp_path / "back" / "model.safetensors"), load_file(src / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    ref = Transformers(src)
    ids = ref.tokenize("The capital of France is Paris, and the capital of Italy is Rome.")
    cand = LlamaCpp(tmp_path / "m.gguf", n_ctx=64)
    assert logit_parity(ref.logits(ids), cand.logits(ids))["kl_mean"] <= 1e-5
    cand.close()


def test_a_plugin_family_converts(plugin_path, checkpoints, tmp_path):
    """toyllama (registered by the plugin) -> GGUF and back: the family's model_type survives the round trip."""
    src = tmp_path / "toy"
    r = cli(plugin_path, "convert", checkpoints("llama"), src, "--to", "npz")
    assert r.returncode == 0, r.stderr
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "toyllama"}))
    for args in (("convert", src, tmp_path / "toy.gguf"), ("convert", tmp_path / "toy.gguf", tmp_path / "back",
                                                          "--to", "npz")):
        r = cli(plugin_path, *args)
        assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "toyllama"


@pytest.mark.parametrize("damage,code", [("tensors", 2), ("config", 2), ("option", 2)])
def test_bad_input_gets_one_line_and_an_exit_code(plugin_path, checkpoints, tmp_path, damage, code):
    src = tmp_path / "m"
    assert cli(plugin_path, "convert", checkpoints("llama"), src, "--to", "npz").returncode == 0
    args = ("convert", src, tmp_path / "out.gguf")
    if damage == "tensors":
        (src / "tensors.npz").write_bytes(b"PK\x03\x04 not really a zip")
    elif damage == "config":
        (src / "config.json").write_text("{nope")
    else:
        args = ("convert", checkpoints("llama"), tmp_path / "out", "--to", "npz", "--quant", "Q4_K_M")
    r = cli(plugin_path, *args)
    assert r.returncode == code and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out.gguf").exists() and not (tmp_path / "out").exists()
    if damage == "option":
        assert "npz output takes no such option (its options: --dtype)" in r.stderr, r.stderr
