"""Atomic output: a conversion killed midway or out of disk leaves no DST and no partial file."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from support.cli import run_cli


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    """A one-layer llama with a 128256 x 1024 embedding (256 MB f16): slow enough to interrupt."""
    d = tmp_path_factory.mktemp("big")
    h, v = 1024, 128256
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
              "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 8,
              "vocab_size": v, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}
    (d / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    t = {"model.embed_tokens.weight": rng.standard_normal((v, h), np.float32).astype(np.float16),
         "model.norm.weight": np.ones(h, np.float16)}
    p = "model.layers.0."
    for name, shape in [("input_layernorm", (h,)), ("post_attention_layernorm", (h,)),
                        ("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (h, h)), ("self_attn.v_proj", (h, h)),
                        ("self_attn.o_proj", (h, h)), ("mlp.gate_proj", (64, h)), ("mlp.up_proj", (64, h)),
                        ("mlp.down_proj", (h, 64))]:
        t[f"{p}{name}.weight"] = np.ones(shape, np.float16)
    save_file(t, str(d / "model.safetensors"))
    return d


def _start(src: Path, dst: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("modelport")
    return subprocess.Popen([str(exe), "convert", str(src), str(dst), "--dtype", "f32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_partial(dst: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        partial = list(dst.parent.glob(dst.name + ".partial-*"))
        if partial and partial[0].stat().st_size > 1 << 20:
            return
        time.sleep(0.005)
    pytest.fail("the conversion never wrote a partial file")


def test_sigkill_midway_leaves_no_destination(big_model, tmp_path):
    dst = tmp_path / "m.gguf"
    proc = _start(big_model, dst)
    _wait_for_partial(dst, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dst.exists()
    # the killed run's partial is swept by the next run, which then succeeds
    assert run_cli("convert", big_model, dst, "--dtype", "f32").returncode == 0
    assert dst.exists() and not list(tmp_path.glob("m.gguf.partial-*"))


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_interrupt_removes_the_partial(big_model, tmp_path, sig, code):
    dst = tmp_path / "m.gguf"
    proc = _start(big_model, dst)
    _wait_for_partial(dst, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == ["modelport: interrupted; nothing was written"]
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs: a real full disk (needs root, as CI runs)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_is_one_line_and_leaves_nothing(tiny_disk, checkpoints):
    dst = tiny_disk / "m.gguf"
    r = run_cli("convert", checkpoints("llama"), dst)
    assert r.returncode == 5, r.stderr
    assert r.stderr.strip().splitlines() == [f"modelport: {dst}: could not write output: disk full; nothing was written"]
    assert list(tiny_disk.iterdir()) == []
