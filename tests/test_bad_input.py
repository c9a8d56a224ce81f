"""Each bad input gets a one-line error naming the file and the problem, its exit code, and no output at all."""
from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from gguf import GGUF_MAGIC

from support.cli import run_cli

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
          "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 4,
          "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}


def safetensors_bytes(entries: dict, data: bytes, header_len: int | None = None) -> bytes:
    header = json.dumps(entries).encode()
    return struct.pack("<Q", len(header) if header_len is None else header_len) + header + data


def good_entries() -> tuple[dict, bytes]:
    emb = np.zeros((4, 8), np.float32).tobytes()
    norm = np.ones(8, np.float32).tobytes()
    return ({"model.embed_tokens.weight": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]},
             "model.norm.weight": {"dtype": "F32", "shape": [8], "data_offsets": [128, 160]}}, emb + norm)


def full_entries() -> tuple[dict, bytes]:
    """Every tensor of CONFIG's one-layer llama (zeros), packed as the safetensors library packs them."""
    h, f, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    shapes = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    p = "model.layers.0."
    shapes |= {p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
               **{p + f"self_attn.{x}_proj.weight": [h, h] for x in "qkvo"},
               p + "mlp.gate_proj.weight": [f, h], p + "mlp.up_proj.weight": [f, h], p + "mlp.down_proj.weight": [h, f]}
    entries, off = {}, 0
    for name, shape in shapes.items():
        n = 4 * int(np.prod(shape))
        entries[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    return entries, b"\0" * off


def folder_with(tmp_path, content: bytes, config: dict = CONFIG):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    (d / "model.safetensors").write_bytes(content)
    return d


def bad_safetensors(kind: str) -> bytes:
    entries, data = good_entries()
    if kind == "truncated":
        return safetensors_bytes(entries, data)[:-40]
    if kind == "header_too_long":
        return safetensors_bytes(entries, data, header_len=1 << 40)
    if kind == "overlap":
        entries["model.norm.weight"]["data_offsets"] = [96, 128]
        entries["model.norm.weight"]["shape"] = [8]
        return safetensors_bytes(entries, data)
    if kind == "out_of_range":
        entries["model.norm.weight"]["data_offsets"] = [4096, 4128]
        return safetensors_bytes(entries, data)
    if kind == "unknown_dtype":
        entries["model.norm.weight"]["dtype"] = "F13"
        return safetensors_bytes(entries, data)
    raise KeyError(kind)


def assert_clean_failure(r, code: int, name: str, words: str, out_dir) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert name in lines[0] and words in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not [p for p in out_dir.iterdir() if p.name.startswith("out")], "something was written"


@pytest.mark.parametrize("kind,words", [
    ("truncated", "past the end of the file"),
    ("header_too_long", "header length"),
    ("overlap", "overlap"),
    ("out_of_range", "past the end of the file"),
    ("unknown_dtype", "unknown dtype 'F13'"),
])
def test_bad_safetensors(kind, words, tmp_path):
    src = folder_with(tmp_path, bad_safetensors(kind))
    r = run_cli("convert", src, tmp_path / "out.gguf")
    assert_clean_failure(r, 2, "model.safetensors", words, tmp_path)


def test_gguf_with_absurd_counts(tmp_path):
    bad = tmp_path / "absurd.gguf"
    bad.write_bytes(struct.pack("<IIQQ", GGUF_MAGIC, 3, 1 << 60, 1 << 61) + b"\0" * 64)
    r = run_cli("convert", bad, tmp_path / "out")
    assert_clean_failure(r, 2, "absurd.gguf", "more than a file of", tmp_path)


def test_truncated_gguf(tmp_path, checkpoints):
    good = tmp_path / "good.gguf"
    assert run_cli("convert", checkpoints("llama"), good).returncode == 0
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-1000])
    r = run_cli("convert", cut, tmp_path / "out")
    assert_clean_failure(r, 2, "cut.gguf", "past the end of the file", tmp_path)
    r = run_cli("inspect", cut)
    assert r.returncode == 2 and "cut.gguf" in r.stderr


def test_folder_with_no_model(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("nothing here")
    r = run_cli("convert", empty, tmp_path / "out.gguf")
    assert_clean_failure(r, 2, "empty", "no model here", tmp_path)


def test_unsupported_architecture_names_the_closest(tmp_path):
    entries, data = good_entries()
    src = folder_with(tmp_path, safetensors_bytes(entries, data), {**CONFIG, "model_type": "llama4"})
    r = run_cli("convert", src, tmp_path / "out.gguf")
    assert_clean_failure(r, 3, "out.gguf", "unsupported architecture 'llama4'; closest supported: llama", tmp_path)


def test_existing_destination_needs_force(tmp_path, checkpoints):
    dst = tmp_path / "m.gguf"
    dst.write_bytes(b"precious")
    r = run_cli("convert", checkpoints("llama"), dst)
    assert r.returncode == 2 and "--force" in r.stderr
    assert dst.read_bytes() == b"precious"
    assert run_cli("convert", checkpoints("llama"), dst, "--force").returncode == 0
    assert dst.read_bytes()[:4] == b"GGUF"


def test_inputs_are_never_touched(tmp_path, checkpoints):
    src = tmp_path / "src"
    shutil.copytree(checkpoints("llama"), src)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in src.iterdir()}
    assert run_cli("convert", src, tmp_path / "m.gguf").returncode == 0
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in src.iterdir()} == before


@pytest.mark.parametrize("to", ["gguf", "onnx", "safetensors"])
def test_an_integer_weight_is_named_not_a_traceback(to, tmp_path):
    """A well-formed checkpoint holding an integer tensor where a weight belongs: exit 3, one line naming the file
    and the tensor, nothing written (GGML's integer types must not be taken for quantized blocks)."""
    entries, data = full_entries()
    entries["model.embed_tokens.weight"]["dtype"] = "I32"
    src = folder_with(tmp_path, safetensors_bytes(entries, data))
    dst = tmp_path / "out"
    r = run_cli("convert", src, dst, "--to", to, "--dtype", "f16")
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert "model.safetensors" in r.stderr and "'model.embed_tokens.weight'" in r.stderr and "cannot cast I32" in r.stderr
    assert not dst.exists()


def test_a_missing_weight_is_named_on_the_way_to_onnx(tmp_path):
    entries, data = good_entries()
    src = folder_with(tmp_path, safetensors_bytes(entries, data))  # one layer in config.json, none in the file
    r = run_cli("convert", src, tmp_path / "out", "--to", "onnx")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "model.safetensors" in r.stderr and "'model.layers.0.input_layernorm.weight' is missing" in r.stderr
    assert not (tmp_path / "out").exists()
