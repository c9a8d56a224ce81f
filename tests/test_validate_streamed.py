"""Issue 14 on tiny models: the sides run in turn through a reference file, a safetensors reference streams from
its checkpoint module by module, and a saved reference (.mpref) checks candidates without the original; every
figure of those paths equals the in-memory path's (the logits are bit-identical, so the figures are equal)."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from modelport import api
from modelport.formats.errors import BadInput
from modelport.formats.model import MemorySlice
from modelport.validators import diff as diffs
from modelport.validators import memory, metrics, runtimes

from support.cli import run_cli

TEXTS = {"code": "def mean(xs):\n    return sum(xs) / len(xs)  # 平均 🙂\n",
         "prose": "Streaming a reference keeps one layer in memory at a time, so large models fit. " * 6}


def _figures(rep) -> dict:
    d = rep.to_json()
    d.pop("seconds")
    return d


@pytest.fixture(scope="module")
def models(checkpoints, tmp_path_factory):
    """A bf16 tiny llama (tied embedding, cast to fp32 on load) and its Q8_0 GGUF."""
    hf = checkpoints("llama", "bfloat16")
    q8 = tmp_path_factory.mktemp("streamed") / "q8.gguf"
    api.convert(hf, q8, quant="Q8_0")
    return hf, q8


@pytest.mark.parametrize("family,dtype", [("llama", "bfloat16"), ("qwen2", "float32"), ("gemma2", "float32")])
def test_streamed_reference_logits_are_bit_identical(checkpoints, family, dtype):
    """transformers' own forward on weights read per module from the checkpoint: tied embeddings (llama), biases
    (qwen2), soft-capping and eager attention (gemma2)."""
    hf = checkpoints(family, dtype)
    held = runtimes.Transformers(hf)
    ids = held.tokenize(TEXTS["prose"])
    a = held.logits(ids)
    del held
    streamed = runtimes.TransformersStreamed(hf)
    assert streamed.tokenize(TEXTS["prose"]) == ids
    assert all(p.device.type == "meta" for p in streamed.model.parameters())  # nothing held between forwards
    b = streamed.logits(ids)
    assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)


def test_every_path_gives_the_in_memory_figures(models, tmp_path):
    hf, q8 = models
    lines = []
    held = api.validate(hf, q8, texts=TEXTS, stream=False)
    streamed = api.validate(hf, q8, texts=TEXTS, stream=True, save_reference=tmp_path / "ref.mpref",
                            progress=lines.append)
    saved = api.validate(tmp_path / "ref.mpref", q8)
    assert _figures(held) == _figures(streamed) == _figures(saved)
    assert held.kl_per_position == streamed.kl_per_position == saved.kl_per_position
    assert held.tier == "q8" and held.reference.path == str(hf) and held.failed_gates == saved.failed_gates
    # the same figures computed here from each runtime's logits, with nothing in between
    ref, cand = runtimes.Transformers(hf), runtimes.LlamaCpp(q8, n_ctx=256)
    ids = ref.tokenize(TEXTS["code"])
    direct = metrics.summarize(metrics.per_position(ref.logits(ids), cand.logits(ids), ids))
    cand.close()
    row = next(t for t in saved.texts if t["name"] == "code")
    assert {k: row[k] for k in direct} == direct
    assert any(line.startswith("reference (transformers, streamed): text 1/2 code") and "tokens/s" in line
               for line in lines)
    assert any(line.startswith("candidate (llama.cpp): text 2/2 prose") for line in lines)


def test_reference_streams_itself_when_holding_it_would_not_fit(models, monkeypatch):
    """A reference held in fp32 that would not fit (an 8B-sized estimate here) streams instead, with the same
    figures; when even that does not fit, validate refuses before any work."""
    hf, q8 = models
    held = api.validate(hf, q8, texts=TEXTS, stream=False)
    monkeypatch.setattr(memory, "in_memory", lambda parameters: 8_000_000_000 * memory.FP32_BYTES)
    lines = []
    rep = api.validate(hf, q8, texts=TEXTS, progress=lines.append)
    assert any(line.startswith("reference (transformers, streamed)") for line in lines)
    assert _figures(rep) == _figures(held)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)
    lines.clear()
    with pytest.raises(Exception) as e:
        api.validate(hf, q8, texts=TEXTS, progress=lines.append)
    assert e.value.exit_code == 2 and "GiB" in str(e.value) and lines == []


def test_a_streamed_reference_refusing_comes_back_as_its_own_error(models, tmp_path):
    """The streamed reference runs in a child process: its ModelportError reaches the caller whole (type, path,
    exit code), and the reference file it was saving is not left behind."""
    hf, q8 = models
    with pytest.raises(BadInput) as e:
        api.validate(hf, q8, texts={"short": ""}, stream=True, save_reference=tmp_path / "ref.mpref")
    assert e.value.exit_code == 2 and "at least two tokens" in str(e.value) and not list(tmp_path.iterdir())


def test_saved_reference_on_the_command_line(models, tmp_path):
    hf, q8 = models
    text = tmp_path / "t.txt"
    text.write_text(TEXTS["prose"], encoding="utf-8")
    ref = tmp_path / "ref.mpref"
    r = run_cli("validate", hf, "--save-reference", ref, "--text-file", text, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reference"] == str(ref)
    with zipfile.ZipFile(ref) as z:  # JSON and float32 .npy only: nothing that unpickles
        assert sorted(z.namelist()) == ["logits/0.npy", "reference.json"]
        meta = json.loads(z.read("reference.json"))
    assert meta["texts"]["t"]["text"] == TEXTS["prose"] and meta["reference"]["runtime"] == "transformers"
    assert meta["sha256"] and all(len(h) == 64 for h in meta["sha256"].values())
    direct = run_cli("validate", hf, q8, "--text-file", text, "--json")
    later = run_cli("validate", ref, q8, "--json")
    assert direct.returncode == later.returncode in (0, 1), later.stderr  # a gate may fail: the same one
    a, b = json.loads(direct.stdout), json.loads(later.stdout)
    a.pop("seconds"), b.pop("seconds")
    assert a == b

    other = tmp_path / "other.txt"
    other.write_text("Some other text entirely.", encoding="utf-8")
    broken = tmp_path / "broken.mpref"
    broken.write_bytes(ref.read_bytes()[:1000])
    flipped = tmp_path / "flipped.mpref"  # one bit of the logits flipped: the entry's CRC (checked as rows stream)
    blob = bytearray(ref.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    flipped.write_bytes(bytes(blob))
    reshaped = tmp_path / "reshaped.mpref"  # logits of another vocabulary than the JSON says
    with zipfile.ZipFile(ref) as z, zipfile.ZipFile(reshaped, "w") as out:
        out.writestr("reference.json", z.read("reference.json"))
        with out.open("logits/0.npy", "w") as f:
            np.save(f, np.zeros((len(meta["texts"]["t"]["ids"]), meta["texts"]["t"]["vocab"] - 1), np.float32))
    for args, says in [((ref, q8, "--text-file", other), "saved for other texts"),
                       ((broken, q8), "not a saved reference"),
                       ((flipped, q8), "logits/0.npy: BadZipFile"),
                       ((reshaped, q8), "expected float32"),
                       ((hf, "--save-reference", ref, "--text-file", text), "exists"),
                       ((hf,), "--save-reference")]:
        r = run_cli("validate", *args)
        assert r.returncode == 2 and says in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)


def test_a_reference_from_another_tokenizer_is_refused(models, checkpoints, tmp_path):
    hf, _ = models
    ref = api.save_reference(hf, tmp_path / "ref.mpref", texts=TEXTS)
    other = tmp_path / "gemma.gguf"
    api.convert(checkpoints("gemma"), other, dtype="f16")
    r = run_cli("validate", ref, other)
    assert r.returncode == 2 and "another tokenizer" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_diff_streams_row_blocks_with_the_whole_tensor_figures(models, monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 70)).astype(np.float32)
    b = a + 1e-3 * rng.standard_normal(a.shape).astype(np.float32)
    whole = diffs.compare(a, b)
    monkeypatch.setattr(diffs, "BLOCK_BYTES", 7 * 70 * 4)  # 43 blocks
    blocks = diffs.compare_refs(MemorySlice.tensor(a, "F32"), MemorySlice.tensor(b, "F32"))
    assert blocks.keys() == whole.keys() and blocks["bit_exact"] is whole["bit_exact"] is False
    for k in ("max_abs", "rmse", "cosine", "snr_db"):
        assert blocks[k] == pytest.approx(whole[k], rel=1e-12)
    hf, q8 = models
    small = diffs.diff(hf, q8).to_json()
    monkeypatch.undo()
    big = diffs.diff(hf, q8).to_json()
    for x, y in zip(small["tensors"], big["tensors"]):
        assert x.keys() == y.keys()
        for k, v in x.items():
            assert v == (pytest.approx(y[k], rel=1e-12) if isinstance(v, float) else y[k])
