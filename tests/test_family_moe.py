"""Mixture-of-experts families (mixtral, qwen2_moe, qwen3_moe) beyond the shared family checks: a stacked GGUF expert
tensor streams in row blocks from the experts' own files; a quantized GGUF made by llama-quantize splits back into
per-expert tensors (block rows cut by byte ranges) that gguf-py's reader and dequantizer agree with, and transformers
runs them as llama.cpp runs the GGUF; a Mixtral GGUF with only llama.cpp's keys (arch `llama`, no source config)
converts back to Mixtral."""
from __future__ import annotations

import json
import shutil

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file, save_file

from modelport import api
from modelport.convert import archs, experts
from modelport.convert.dtypes import cast
from modelport.formats.model import ConcatSlice, FileSlice
from modelport.formats.sink import streaming
from modelport.validators.metrics import logit_parity
from modelport.validators.runtimes import LlamaCpp, Transformers

from support.cli import run_cli
from support.quantize import llama_quantize
from support.variants import assert_same_model, foreign_gguf

QWEN_EXPERTS = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}


def test_stacked_experts_stream_in_row_blocks_from_the_experts_files(checkpoints, tmp_path):
    model = api.load(checkpoints("mixtral"))
    stacked = experts.stack(model.tensors, archs.for_hf("mixtral"), model.config)
    assert not any(".experts.0." in name for name in stacked)
    ref = stacked["model.layers.0.block_sparse_moe.experts.w1.weight"]
    parts = [model.tensors[f"model.layers.0.block_sparse_moe.experts.{x}.w1.weight"] for x in range(4)]
    assert ref.shape == (4, *parts[0].shape)
    assert isinstance(ref.stored, ConcatSlice) and all(isinstance(p, FileSlice) for p in ref.stored.parts)
    whole = np.stack([p.read() for p in parts])
    row = parts[0].shape[-1] * 4
    for got, dtype in ((ref, np.float32), (cast(ref, "F16"), np.float16)):
        blocks = list(got.chunks(chunk_bytes=5 * row))  # 5 rows a block: blocks straddle the experts' 192 rows
        assert max(b.shape[0] for b in blocks) == 5
        np.testing.assert_array_equal(np.concatenate(blocks).reshape(ref.shape), whole.astype(dtype))
    with open(tmp_path / "stacked", "wb") as f, streaming(f) as out:  # unchanged bytes: copied expert by expert
        assert ref.write_to(out) == whole.nbytes
    assert (tmp_path / "stacked").read_bytes() == whole.tobytes()


def test_llama_quantize_gguf_splits_into_experts_that_transformers_runs(checkpoints, mixed_text, tmp_path):
    src = checkpoints("qwen2_moe")
    api.convert(src, tmp_path / "lossless.gguf", dtype="f32")
    llama_quantize(tmp_path / "lossless.gguf", tmp_path / "q4.gguf", "Q4_K_M")  # writes the shared gate 1-D
    api.convert(tmp_path / "q4.gguf", tmp_path / "back", dtype="f32")
    back = api.load(tmp_path / "back")
    assert set(back.tensors) == set(api.load(src).tensors)
    assert back.tensors["model.layers.0.mlp.shared_expert_gate.weight"].shape == (1, 64)
    stacked = [t for t in GGUFReader(tmp_path / "q4.gguf").tensors if t.name.split(".")[-2] in QWEN_EXPERTS]
    assert len(stacked) == 6 and {t.tensor_type.name for t in stacked} >= {"Q5_0", "Q8_0"}  # block rows, not floats
    for t in stacked:
        values = dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        _, bid, kind, _ = t.name.split(".")
        for x in range(4):
            got = back.tensors[f"model.layers.{bid}.mlp.experts.{x}.{QWEN_EXPERTS[kind]}.weight"].read()
            np.testing.assert_array_equal(got, values[x], err_msg=f"{t.name} expert {x}")
    hf = Transformers(tmp_path / "back")
    ids = hf.tokenize(mixed_text)
    llm = LlamaCpp(tmp_path / "q4.gguf")
    parity = logit_parity(hf.logits(ids), llm.logits(ids))
    llm.close()
    print(f"qwen2_moe Q4_K_M, llama.cpp vs its weights in transformers: {parity}")
    # the same weights, but llama.cpp rounds activations to 8 bits for quantized dot products: 8e-4 measured
    assert parity["kl_mean"] <= 1e-2 and parity["top1"] >= 0.99


def test_a_mixtral_gguf_made_elsewhere_converts_back(checkpoints, mixed_text, tmp_path):
    """Only llama.cpp's keys (no source config.json): arch `llama` with an expert count is Mixtral."""
    src = checkpoints("mixtral")
    foreign_gguf(src, tmp_path / "theirs.gguf")
    api.convert(tmp_path / "theirs.gguf", tmp_path / "back")
    config = json.loads((tmp_path / "back/config.json").read_text())
    assert (config["model_type"], config["num_local_experts"], config["num_experts_per_tok"]) == ("mixtral", 4, 2)
    assert_same_model(src, tmp_path / "back", mixed_text)  # the rebuilt config.json runs as the source's does


def test_a_missing_expert_is_bad_input_naming_it(checkpoints, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(checkpoints("mixtral"), src)
    tensors = load_file(src / "model.safetensors")
    del tensors["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    r = run_cli("convert", src, tmp_path / "m.gguf")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    missing = "model.layers.1.block_sparse_moe.experts.2.w3.weight"
    assert f"{src / 'model.safetensors'}: tensor {missing!r} is missing" in r.stderr
    assert not (tmp_path / "m.gguf").exists()
