"""Valid inputs that used to end in a traceback (issue 16): diff of models with different vocabulary sizes, an ONNX
quantize whose data file is hard-linked, and a GGUF that llama.cpp refuses to load in validate's runtime."""
from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner

from modelport import api
from modelport.cli import main
from modelport.formats.errors import BadInput

import malicious


def test_diff_of_different_vocab_sizes(tmp_path):
    a = malicious.hf_folder(tmp_path, name="a")
    b = malicious.hf_folder(tmp_path, {**malicious.CONFIG, "vocab_size": 6}, name="b")
    r = CliRunner().invoke(main, ["diff", str(a), str(b)])
    assert r.exit_code == 0, r.stderr
    assert "cosine -)" in " ".join(r.stdout.split()) and "model.embed_tokens.weight" in r.stdout


def test_quantize_onnx_with_a_hard_linked_data_file(tmp_path):
    pytest.importorskip("onnxruntime")
    src = tmp_path / "onnx"
    api.convert(malicious.hf_folder(tmp_path), src, to="onnx")
    linked = tmp_path / "linked"
    linked.mkdir()
    for f in src.iterdir():
        if f.name.endswith(".data"):
            os.link(f, linked / f.name)
        else:
            shutil.copy(f, linked / f.name)
    r = CliRunner().invoke(main, ["quantize", str(linked), str(tmp_path / "q"), "--quant", "int8"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "q" / "model.onnx").is_file()


def test_a_gguf_llama_cpp_refuses_is_one_line_bad_input(tmp_path):
    """rope.dimension_count 6 with 4-wide heads: our reader reads the keys it needs (key_length), llama.cpp's llama
    arch refuses n_rot != head size; validate's runtime says so in one line instead of a ValueError."""
    pytest.importorskip("llama_cpp")
    from modelport.validators.runtimes import LlamaCpp

    src = malicious.hf_folder(tmp_path)
    good = tmp_path / "good.gguf"
    api.convert(src, good, dtype="f32")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(malicious.patch_u32(good.read_bytes(), "llama.rope.dimension_count", 6))
    api.load(bad)  # a file we read
    with pytest.raises(BadInput, match="llama.cpp refused to load it") as e:
        LlamaCpp(bad)
    assert e.value.path == str(bad) and "\n" not in str(e.value)
