"""formats/sink.py: the direct-I/O sink and the buffered one write the same bytes, whatever the header length,
block boundaries and unchanged copies; a whole conversion is byte-identical through either."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from modelport import api
from modelport.formats import sink
from modelport.formats.model import FileSlice

from support.cli import run_cli


def _write(path, src, monkeypatch, buffered):
    """A header of odd length, then writes and unchanged copies that straddle the direct sink's blocks."""
    monkeypatch.setenv("MODELPORT_BUFFERED_IO", "1" if buffered else "0")
    rng = np.random.default_rng(7)
    with open(path, "wb") as f:
        f.write(b"header" * 1001)
        with sink.streaming(f) as out:
            assert isinstance(out, sink.BufferedSink if buffered else sink.DirectSink)
            out.write(rng.integers(0, 255, sink.DirectSink.BLOCK + 12345, dtype=np.uint8).data)
            assert out.copy(FileSlice(src, 3, src.stat().st_size - 3)) == src.stat().st_size - 3
            out.write(rng.standard_normal(777).astype(np.float32).data)
            out.write(b"")
            end = out.tell()
        assert f.tell() == end
        f.write(b"trailer")  # the file object goes on where the sink ended
    return path.read_bytes()


def test_direct_and_buffered_sinks_write_the_same_bytes(tmp_path, monkeypatch):
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no direct I/O on this platform")
    src = tmp_path / "src"
    src.write_bytes(np.random.default_rng(1).integers(0, 255, 2 * sink.DirectSink.BLOCK + 99, dtype=np.uint8))
    direct = _write(tmp_path / "direct", src, monkeypatch, buffered=False)
    buffered = _write(tmp_path / "buffered", src, monkeypatch, buffered=True)
    assert direct == buffered
    assert len(direct) == 6006 + sink.DirectSink.BLOCK + 12345 + src.stat().st_size - 3 + 777 * 4 + 7


def test_an_error_inside_the_sink_leaves_the_partial_to_atomic_output(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_BUFFERED_IO", "0")
    with pytest.raises(RuntimeError), open(tmp_path / "x", "wb") as f, sink.streaming(f) as out:
        out.write(b"abc")
        raise RuntimeError("stop")
    assert not any(t.name == "modelport-direct-io" for t in threading.enumerate())


@pytest.mark.parametrize("fmt", ["gguf", "safetensors", "onnx"])
def test_conversions_are_byte_identical_through_either_sink(checkpoints, tmp_path, monkeypatch, fmt):
    src = checkpoints("llama")
    outs = {}
    for buffered in ("0", "1"):
        monkeypatch.setenv("MODELPORT_BUFFERED_IO", buffered)
        dst = tmp_path / f"out-{buffered}{'.gguf' if fmt == 'gguf' else ''}"
        api.convert(src, dst, **({"dtype": "f16"} if fmt != "onnx" else {"to": "onnx", "ops": "ort"}))
        outs[buffered] = {p.relative_to(dst).as_posix(): p.read_bytes() for p in
                          ([dst] if dst.is_file() else sorted(dst.rglob("*")) if dst.is_dir() else [])
                          if p.is_file()}
    assert outs["0"] == outs["1"] and outs["0"]
