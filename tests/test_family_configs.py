"""gpt2, starcoder2, falcon (7B, 40B, Falcon2) and mpt beyond the shared family table: a GGUF that lacks our stored
config.json (as llama.cpp's own converter writes them) comes back to an HF folder transformers runs like the source,
from GGUF keys alone (GPT-2's own names, MPT's nested attn_config, Falcon's layout told by its tensors); and the
variants llama.cpp cannot run are refused with exit 3, naming config.json, before anything is written."""
from __future__ import annotations

import json
import shutil

import pytest

from modelport import api

from support.cli import run_cli
from support.variants import assert_same_model, foreign_gguf

FAMILIES = ("gpt2", "starcoder2", "falcon", "falcon40b", "falcon2", "mpt")


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_without_our_config_comes_back_from_its_keys(family, checkpoints, mixed_text, tmp_path):
    src = checkpoints(family)
    foreign_gguf(src, tmp_path / "foreign.gguf")
    api.convert(tmp_path / "foreign.gguf", tmp_path / "back")
    rebuilt = json.loads((tmp_path / "back" / "config.json").read_text())
    assert rebuilt != json.loads((src / "config.json").read_text())  # made from the keys, not copied
    assert_same_model(src, tmp_path / "back", mixed_text)


REFUSED = [("falcon", {"alibi": True}), ("falcon", {"parallel_attn": False}),
           ("mpt", {"attn_config": {"alibi": False}}), ("mpt", {"attn_config": {"softmax_scale": 0.5}})]


@pytest.mark.parametrize("family,change", REFUSED, ids=["falcon-alibi", "falcon-sequential", "mpt-no-alibi",
                                                          "mpt-softmax-scale"])
def test_variants_llama_cpp_cannot_run_are_refused(family, change, checkpoints, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(checkpoints(family), src)
    cfg = json.loads((src / "config.json").read_text())
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    (src / "config.json").write_text(json.dumps(cfg))
    r = run_cli("convert", src, tmp_path / "out.gguf")
    assert r.returncode == 3, r.stderr
    assert "config.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list(tmp_path.glob("out.gguf*"))
