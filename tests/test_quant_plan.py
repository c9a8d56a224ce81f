"""convert.quant_plan against llama.cpp's own quantizer: GGUFs made by our converter are quantized with
`llama_cpp.llama_model_quantize` (the C++ code the plan mirrors) and every tensor's written type must be the planned
one, fallbacks included. The tiny families have 64-wide rows (K-quants fall back); the wide models have rows of 256
and 8 or 16 layers, so the mixes' layer patterns (use_more_bits, n/8, n/16, GQA >= 4, tied output) show.

The GGUFs carry no tokenizer: llama-quantize reads hparams and tensors only, and a 128k-token vocabulary would make
each header read take a second."""
from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from modelport import api
from modelport.convert.gguf import quant_plan
from modelport.formats import gguf

llama_cpp = pytest.importorskip("llama_cpp")

PRESETS = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "Q3_K_L", "Q3_K_M", "Q3_K_S",
           "Q2_K", "IQ4_NL", "IQ4_XS")
FAMILIES = ("llama", "mistral", "qwen2")
# name -> (layers, heads, kv heads, tied): GQA 1 untied, and GQA 4 tied with 16 layers (n/16 rules)
WIDE = {"wide": (8, 4, 4, False), "wide-gqa": (16, 4, 1, True)}
# the other presets, on 256-wide rows (Q2_0 is left out: gguf-py 0.19 cannot read its type)
MORE_PRESETS = ("F32", "F16", "BF16", "Q5_0", "Q5_1", "IQ3_S", "IQ3_M", "TQ1_0", "TQ2_0", "Q1_0", "MXFP4_MOE")
# with an importance matrix: the presets whose mix changes with one, and a sample of those that need one (the IQ1
# grids alone take ~10 s to set up)
WITH_IMATRIX = ("Q4_0", "IQ4_XS", "Q2_K_S", "IQ3_XXS", "IQ3_XS", "IQ2_XXS", "IQ2_M")
FALLBACK_WARNING = re.compile(r"warning: (\S+)\s+- ncols")


def _wide(out: Path, layers: int, heads: int, kv_heads: int, tied: bool) -> Path:
    """A llama with 256-wide rows and a small vocabulary."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", hidden_size=256, intermediate_size=256, num_hidden_layers=layers,
                                  num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=256 // heads,
                                  vocab_size=512, tie_word_embeddings=tied, max_position_embeddings=4096)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def f32_gguf(tmp_path_factory, checkpoints):
    """model name -> an F32 GGUF made by our converter, as llama-quantize would start from."""
    root = tmp_path_factory.mktemp("quant_plan")
    made: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in made:
            if model in FAMILIES:
                hf = root / model
                hf.mkdir()
                for f in ("config.json", "model.safetensors"):
                    shutil.copy(checkpoints(model) / f, hf / f)
            else:
                hf = _wide(root / model, *WIDE[model])
            api.convert(hf, root / f"{model}.gguf", dtype="f32")
            made[model] = root / f"{model}.gguf"
        return made[model]

    return get


def _imatrix(contents) -> tuple[ctypes.Array, list]:
    """All-ones importance data for every matrix, as llama_model_imatrix_data entries (null-name terminated)."""
    entries, keep = [], []
    for name, ref in contents.tensors.items():
        if len(ref.shape) < 2:
            continue
        ones = np.ones(ref.shape[-1] * (ref.shape[-3] if len(ref.shape) > 2 else 1), dtype=np.float32)
        keep.append(ones)
        entries.append(llama_cpp.llama_model_imatrix_data(
            name.encode(), ones.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), ones.size))
    entries.append(llama_cpp.llama_model_imatrix_data(None, None, 0))
    return (llama_cpp.llama_model_imatrix_data * len(entries))(*entries), keep


@contextmanager
def _warnings_only():
    """llama.cpp's log through llama-cpp-python's logger, at warning level: the fallback warnings, not progress."""
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _llama_quantize(src: Path, dst: Path, preset: str, capfd, imatrix: bool = False, pure: bool = False):
    """(return code, names whose fallback llama.cpp warned about)."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant_plan.PRESETS[preset]
    params.nthread = min(os.cpu_count() or 1, 8)
    params.pure = pure
    if imatrix:
        data, keep = _imatrix(gguf.read(src))
        params.imatrix = data
    capfd.readouterr()
    with _warnings_only():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    err = capfd.readouterr().err
    return rc, set(FALLBACK_WARNING.findall(err))


def _plan(src: Path, preset: str, **kw) -> list[quant_plan.TensorChoice]:
    contents = gguf.read(src)
    arch = contents.get("general.architecture")
    hparams = {"n_layer": contents.get(f"{arch}.block_count"), "n_head": contents.get(f"{arch}.attention.head_count"),
               "n_head_kv": contents.get(f"{arch}.attention.head_count_kv"),
               "n_expert": contents.get(f"{arch}.expert_count", 0), "n_embd": contents.get(f"{arch}.embedding_length")}
    tensors = [(name, ref.shape, ref.dtype) for name, ref in contents.tensors.items()]
    return quant_plan.plan(preset, arch, hparams, tensors, **kw)


def _check(src: Path, dst: Path, preset: str, capfd, **kw) -> list[quant_plan.TensorChoice]:
    rc, warned = _llama_quantize(src, dst, preset, capfd, **kw)
    assert rc == 0, f"llama.cpp refused {preset}"
    planned = _plan(src, preset, **kw)
    written = gguf.read(dst)
    assert {c.name: c.type for c in planned} == {n: r.dtype for n, r in written.tensors.items()}
    assert {c.name for c in planned if c.fallback} == warned
    assert written.get("general.file_type") == quant_plan.FILE_TYPE[preset]
    return planned


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("model", FAMILIES + tuple(WIDE))
def test_plan_matches_llama_cpp(model, preset, f32_gguf, tmp_path, capfd):
    _check(f32_gguf(model), tmp_path / "q.gguf", preset, capfd)


@pytest.mark.parametrize("preset", ("Q4_K_M", "IQ4_XS"))
def test_pure_keeps_the_default_type(preset, f32_gguf, tmp_path, capfd):
    planned = _check(f32_gguf("wide"), tmp_path / "q.gguf", preset, capfd, pure=True)
    assert {c.type for c in planned} == {"F32", quant_plan.DEFAULT_TYPE[preset]}


@pytest.mark.parametrize("preset", MORE_PRESETS)
def test_more_presets_on_wide_rows(preset, f32_gguf, tmp_path, capfd):
    _check(f32_gguf("wide"), tmp_path / "q.gguf", preset, capfd)


@pytest.mark.parametrize("preset", sorted(quant_plan.IMATRIX_PRESETS))
def test_refused_without_imatrix(preset, f32_gguf, tmp_path, capfd):
    """llama.cpp refuses exactly the presets requires_imatrix names (the others run in the tests above), and the
    plan says which tensors it would refuse."""
    src = f32_gguf("wide")
    assert quant_plan.requires_imatrix(preset)
    assert _llama_quantize(src, tmp_path / "q.gguf", preset, capfd)[0] != 0
    assert any(c.needs_imatrix for c in _plan(src, preset))


@pytest.mark.parametrize("preset", WITH_IMATRIX)
def test_plan_with_imatrix(preset, f32_gguf, tmp_path, capfd):
    _check(f32_gguf("wide"), tmp_path / "q.gguf", preset, capfd, imatrix=True)


def test_no_fallback_for_q1_0(f32_gguf, tmp_path, capfd):
    """Q1_0's 128-blocks have no smaller fallback type: llama.cpp gives up on 64-wide rows, and so does the plan."""
    src = f32_gguf("mistral")
    assert _llama_quantize(src, tmp_path / "q.gguf", "Q1_0", capfd)[0] != 0
    with pytest.raises(ValueError, match="no tensor type fallback"):
        _plan(src, "Q1_0")


def test_64_wide_rows_need_no_imatrix(f32_gguf, tmp_path, capfd):
    """Per tensor, not per preset: IQ2_XXS rows of 64 fall back to IQ4_NL, which llama.cpp makes without a matrix."""
    assert quant_plan.requires_imatrix("IQ2_XXS")
    planned = _check(f32_gguf("mistral"), tmp_path / "q.gguf", "IQ2_XXS", capfd)
    assert not any(c.needs_imatrix for c in planned)


def test_counters_follow_llama_cpps_order(f32_gguf):
    """llama.cpp walks tensors by layer number then name, whatever the file order: blk.10 after blk.9."""
    src = f32_gguf("wide-gqa")
    contents = gguf.read(src)
    arch = contents.get("general.architecture")
    hp = {"n_layer": 16, "n_head": 4, "n_head_kv": 1}
    tensors = [(n, r.shape, r.dtype) for n, r in contents.tensors.items()]
    as_given = {c.name: c.type for c in quant_plan.plan("Q3_K_M", arch, hp, tensors)}
    shuffled = sorted(tensors, key=lambda t: t[0])[::-1]  # blk.9 ... blk.10 ... blk.0
    assert {c.name: c.type for c in quant_plan.plan("Q3_K_M", arch, hp, shuffled)} == as_given
    assert as_given["blk.0.attn_v.weight"] == as_given["blk.1.attn_v.weight"] == "Q5_K"  # the first two attn_v


def test_fallback_reasons_and_requested(f32_gguf):
    by_name = {c.name: c for c in _plan(f32_gguf("mistral"), "Q4_K_M")}
    down = by_name["blk.1.ffn_down.weight"]  # 2 layers: use_more_bits(1, 2) -> Q6_K, rows of 192 -> Q8_0
    assert (down.requested, down.type) == ("Q6_K", "Q8_0")
    assert down.fallback == "ncols 192 not divisible by 256 (required for type Q6_K) -> falling back to Q8_0"
    assert by_name["output_norm.weight"].fallback is None and by_name["output_norm.weight"].type == "F32"


def test_rules_beyond_the_test_models():
    """Branches the real models above cannot reach: 70B attn_v, 8 experts, odd rows, unknown presets."""
    hp = {"n_layer": 80, "n_head": 64, "n_head_kv": 8, "n_expert": 0}
    v = quant_plan.plan("Q3_K_S", "llama", hp, [("blk.0.attn_v.weight", (1024, 8192), "F16")])[0]
    assert v.type == "Q5_K"  # 70B: attn_v gets Q5_K instead of Q4_K (GQA 8)
    moe = {"n_layer": 32, "n_head": 32, "n_head_kv": 8, "n_expert": 8}
    t = [("blk.3.attn_k.weight", (1024, 4096), "F16"), ("blk.3.ffn_down_exps.weight", (8, 4096, 14336), "F16")]
    k, down = quant_plan.plan("Q4_K_M", "llama", moe, t)
    assert k.type == "Q8_0" and down.type in ("Q4_K", "Q6_K")
    odd = quant_plan.plan("Q4_0", "llama", {"n_layer": 1}, [("blk.0.ffn_up.weight", (16, 24), "F32")])[0]
    assert odd.type == "F16" and "must use F16" in odd.fallback
    with pytest.raises(ValueError, match="unknown llama.cpp preset"):
        quant_plan.plan("Q4_K_X", "llama", {"n_layer": 1}, [])
    assert quant_plan.PRESETS["Q4_K"] == quant_plan.PRESETS["Q4_K_M"] == 15
