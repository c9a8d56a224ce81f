"""The same conversion twice gives byte-identical files, and provenance says where they came from."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest

import modelport
from modelport import api
from modelport.formats import gguf, hashing, safetensors


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


def _recorded(src, dst):
    api.convert(src, dst, dtype="f16", force=True)
    return gguf.read(dst).get("modelport.source.sha256").split(":", 1)[1]


def test_source_digests_are_cached_until_the_file_changes(checkpoints, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MODELPORT_CACHE", str(cache))
    monkeypatch.setattr(hashing, "RACY_NS", 0)  # the copy below is seconds old, not minutes
    src = shutil.copytree(checkpoints("llama"), tmp_path / "src")
    weights = src / "model.safetensors"
    true = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert _recorded(src, tmp_path / "a.gguf") == true
    (entry,) = (cache / "sha256").iterdir()
    assert entry.read_text().endswith(f" {true}\n")
    # the entry is what a rerun records: shown by planting another digest under the same key
    entry.write_text(entry.read_text().replace(true, "f" * 64))
    assert _recorded(src, tmp_path / "a.gguf") == "f" * 64
    os.utime(weights)  # touched: mtime and ctime move, the digest is computed again and the entry replaced
    assert _recorded(src, tmp_path / "a.gguf") == true
    assert entry.read_text().endswith(f" {true}\n")
    entry.write_text("not an entry")  # a damaged entry is a miss
    assert _recorded(src, tmp_path / "a.gguf") == true


@pytest.mark.parametrize("setting", ["off", "recent"])
def test_no_digest_is_kept_when_off_or_for_a_file_just_changed(checkpoints, tmp_path, monkeypatch, setting):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MODELPORT_CACHE", "off" if setting == "off" else str(cache))
    src = shutil.copytree(checkpoints("llama"), tmp_path / "src")  # written just now: within RACY_NS
    assert _recorded(src, tmp_path / "a.gguf") == hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    assert not cache.exists() or not any((cache / "sha256").iterdir())
