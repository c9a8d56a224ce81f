"""The same conversion twice gives byte-identical files, and provenance says where they came from."""
from __future__ import annotations

import hashlib

import modelport
from modelport import api
from modelport.formats import gguf, safetensors


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reruns_are_byte_identical(checkpoints, tmp_path):
    src = checkpoints("llama")
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    # the README's Python API, with the modelport.convert subpackage already imported (it shares the name)
    modelport.convert(src, a, dtype="f16")
    api.convert(src, b, dtype="f16")
    assert _digest(a) == _digest(b)
    ha, hb = tmp_path / "ha", tmp_path / "hb"
    api.convert(a, ha)
    api.convert(a, hb)
    for f in sorted(p.name for p in ha.iterdir()):
        assert _digest(ha / f) == _digest(hb / f), f


def test_provenance_records_tool_source_hashes_and_options(checkpoints, tmp_path):
    src = checkpoints("llama")
    dst = tmp_path / "m.gguf"
    api.convert(src, dst, dtype="bf16")
    kv = gguf.read(dst)
    want = hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    assert kv.get("modelport.source.sha256") == f"model.safetensors:{want}"
    assert kv.get("modelport.version") == api.VERSION
    assert kv.get("modelport.source.format") == "safetensors"
    assert kv.get("modelport.options") == '{"dtype": "bf16"}'

    back = tmp_path / "back"
    api.convert(dst, back)
    meta = safetensors.read(back).metadata["safetensors_metadata"]
    assert meta["modelport.source.sha256"] == f"m.gguf:{hashlib.sha256(dst.read_bytes()).hexdigest()}"
    assert meta["modelport.source.format"] == "gguf"
