"""llama.cpp's per-tensor quantization type choice (the mixes behind llama-quantize's presets), in Python.

Mirrors llama.cpp ggml-org/llama.cpp@0c1e57098, the copy vendored in llama-cpp-python 0.3.36
(src/llama-quant.cpp: tensor_get_category, tensor_allows_quantization, tensor_type_fallback,
llama_tensor_get_type[_impl], tensor_requires_imatrix, llama_ftype_get_default_type, init_quantize_state_counters and
the preliminary loop of llama_model_quantize_impl; include/llama.h for llama_ftype). A preset names a *mix*, not one
type: a file made here must carry the same type per tensor as `llama-quantize` would write, so users comparing files
(and our parity checks) see the same thing. Change this module only together with the llama.cpp it mirrors; the test
compares it with that llama.cpp's own quantizer.

Rules are data where llama.cpp's are data (tables below); `_rules` keeps the branches that really are control flow,
in llama.cpp's order, so the two can be read side by side. Not mirrored: llama-quantize's options beyond --pure and
--imatrix (--tensor-type, --output-tensor-type, --token-embedding-type, --leave-output-tensor, --prune-layers).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

LLAMA_CPP_COMMIT = "0c1e57098"  # llama-cpp-python 0.3.36's vendor/llama.cpp

# llama-quantize's preset names (tools/quantize/quantize.cpp) -> llama_ftype (include/llama.h). Q3_K/Q4_K/Q5_K are
# llama-quantize's aliases of the _M mixes. NVFP4 (39) is in llama.h but has no default type, so llama.cpp refuses it.
PRESETS: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17,
    "Q6_K": 18, "IQ2_XXS": 19, "IQ2_XS": 20, "Q2_K_S": 21, "IQ3_XS": 22, "IQ3_XXS": 23, "IQ1_S": 24, "IQ4_NL": 25,
    "IQ3_S": 26, "IQ3_M": 27, "IQ2_S": 28, "IQ2_M": 29, "IQ4_XS": 30, "IQ1_M": 31, "BF16": 32,
    "TQ1_0": 36, "TQ2_0": 37, "MXFP4_MOE": 38, "Q1_0": 40, "Q2_0": 41,
    "Q3_K": 12, "Q4_K": 15, "Q5_K": 17,
}

# general.file_type as llama.cpp writes it: the requested llama_ftype itself (gguf_set_val_u32(..., ftype)).
FILE_TYPE: dict[str, int] = dict(PRESETS)

_FTYPE_NAME = {v: k for k, v in reversed(PRESETS.items())}  # canonical name per value (Q4_K_M, not the Q4_K alias)

# llama_ftype_get_default_type: the type a preset gives every quantizable tensor before the mix's rules.
DEFAULT_TYPE: dict[str, str] = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
    "Q8_0": "Q8_0", "Q1_0": "Q1_0", "Q2_0": "Q2_0", "MXFP4_MOE": "MXFP4",
    "Q2_K_S": "Q2_K", "Q2_K": "Q2_K", "IQ3_XS": "IQ3_S", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
    "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0", "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_XS",
    "IQ2_M": "IQ2_S", "IQ3_XXS": "IQ3_XXS", "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M", "IQ4_NL": "IQ4_NL",
    "IQ4_XS": "IQ4_XS", "IQ3_S": "IQ3_S", "IQ3_M": "IQ3_S",
}

# ggml type_traits: block size (values per block along a row) of every type a rule can produce, and which are
# "quantized" (ggml_is_quantized: the mix rules and fallbacks run only when the preset's default type is).
BLOCK: dict[str, int] = {
    "F32": 1, "F16": 1, "BF16": 1, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "IQ4_NL": 32,
    "MXFP4": 32, "Q2_0": 64, "NVFP4": 64, "Q1_0": 128,
    "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "IQ2_XXS": 256, "IQ2_XS": 256, "IQ2_S": 256,
    "IQ3_XXS": 256, "IQ3_S": 256, "IQ1_S": 256, "IQ1_M": 256, "IQ4_XS": 256, "TQ1_0": 256, "TQ2_0": 256,
}
FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})

# tensor_type_fallback: a row length that is not a multiple of the block size demotes the type to one with a
# smaller block; when that still does not divide the row (or there is no entry and the block is <= 32), F16.
FALLBACK: dict[str, str] = {
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL",
    "Q2_0": "Q4_0", "Q2_K": "Q4_0", "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
    "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}

# tensor_requires_imatrix: types too coarse to quantize without an importance matrix (not for token_embd/output).
IMATRIX_TYPES = frozenset({"IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"})
IMATRIX_EMBEDDINGS = ("token_embd.weight", "per_layer_token_embd.weight", "output.weight")
# Presets llama.cpp refuses to run without one, on any model whose rows fit their 256-blocks: their default type
# needs one (Q2_K does only inside Q2_K_S), or IQ3_XS's rule making every attn_q IQ3_XXS.
IMATRIX_PRESETS = frozenset({"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"})

# tensor_allows_quantization: what stays in its current type (besides 1-D tensors and names not ending in "weight").
KEEP_IF_CONTAINS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight",
    "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
    "a.rvq.codebook", "mm.a.code_embd",
)
KEEP_NAMES = frozenset({"position_embd.weight", "token_types.weight"})  # LLM_TN is arch-independent
KEEP_IF_CONTAINS_ARCH = {"glm5-next": (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate", "indexer_compressor_ape",
    "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight", "ssm_beta.weight",
    "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight")}
Q8_FLOOR_ARCH = {"glm5-next": ("attn_q_a", "attn_q_b", "nextn.eh_proj")}  # never below Q8_0 there

# tensor_get_category: first match wins (exact names, then substrings).
CATEGORIES = (
    ("output", ("output.weight",), None), ("token_embd", ("token_embd.weight", "per_layer_token_embd.weight"), None),
    ("attn_qkv", None, "attn_qkv.weight"), ("attn_kv_b", None, "attn_kv_b.weight"), ("attn_v", None, "attn_v.weight"),
    ("attn_k", None, "attn_k.weight"), ("attn_q", None, "attn_q.weight"), ("attn_output", None, "attn_output.weight"),
    ("ffn_up", None, "ffn_up"), ("ffn_gate", None, "ffn_gate"), ("ffn_down", None, "ffn_down"),
)
ATTN_V_LIKE = frozenset({"attn_v", "attn_qkv", "attn_kv_b"})  # counted by n_attention_wv, most sensitive

# LLM_TYPE_70B, the one model size the rules look at: arch -> n_layer (without nextn layers); llama also needs GQA
# and not 8 experts (models/llama.cpp).
SEVENTY_B_LAYERS = {"llama": 80, "deci": 80, "qwen2": 80, "olmo": 80, "jais2": 68}

# The mix tables: preset -> type, for a category where llama.cpp's branch is a plain lookup.
IQ2_MIXES = frozenset({"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"})
OUTPUT_Q5_K = frozenset({"IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"})
TOKEN_EMBD = {"IQ2_XXS": "Q2_K", "IQ2_XS": "Q2_K", "IQ1_S": "Q2_K", "IQ1_M": "Q2_K", "IQ2_S": "IQ3_S",
              "IQ2_M": "IQ3_S", "IQ3_XXS": "IQ3_S", "TQ1_0": "Q4_K", "TQ2_0": "Q4_K", "Q2_0": "Q4_K"}
ATTN_OUTPUT = {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}
ATTN_OUTPUT_8_EXPERTS_Q5_K = frozenset({"Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S",
                                        "Q4_K_M", "IQ3_S", "IQ3_M", "IQ4_XS"})
ATTN_QKV = {"Q3_K_M": "Q4_K", "Q3_K_L": "Q4_K", "IQ3_M": "Q4_K", "Q4_K_M": "Q5_K", "Q5_K_M": "Q6_K"}
ATTN_Q_K = {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}  # attn_q and (unless 8 experts) attn_k


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The layers the _M mixes give more bits: the first and last eighth, and every third one between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


@dataclass
class TensorChoice:
    name: str             # GGUF tensor name
    type: str             # ggml type name as gguf.GGMLQuantizationType spells it ("Q4_K", "F32")
    requested: str        # what the preset's rules asked for, before any fallback
    fallback: str | None  # why the row length forced another type (llama.cpp's warning), else None
    needs_imatrix: bool = False  # llama.cpp refuses to make this tensor without an importance matrix


def requires_imatrix(ftype: str) -> bool:
    """Whether llama.cpp refuses this preset without an importance matrix (on rows that fit its blocks; per tensor,
    see TensorChoice.needs_imatrix: rows that fall back to IQ4_NL/Q4_0 need none)."""
    return _canonical(ftype) in IMATRIX_PRESETS


def plan(ftype: str, arch: str, hparams: dict, tensors: list[tuple[str, tuple[int, ...], str]], *,
         imatrix: bool = False, pure: bool = False) -> list[TensorChoice]:
    """The type llama.cpp's quantizer gives each tensor, in the order given.

    ftype: a PRESETS name; arch: the GGUF architecture; hparams: n_layer (block_count), n_head, n_head_kv
    (ints or per-layer lists), n_expert (0 if none), optional n_layer_nextn; tensors: (GGUF name, numpy-order shape,
    current type). `imatrix` says one is supplied (some rules change with it); `pure` skips the mix, keeping only
    the preset's default type and the row-length fallbacks, as llama-quantize --pure does."""
    ftype = _canonical(ftype)
    default = DEFAULT_TYPE[ftype]
    names = [name for name, _, _ in tensors]
    state = _State(ftype, arch, hparams, names, imatrix)
    choices: dict[int, TensorChoice] = {}
    # llama.cpp visits tensors sorted by layer number, then name (llama_model_loader's weights_map): the running
    # counters below (i_attention_wv, i_ffn_*) follow that order, not the file's.
    for i in sorted(range(len(tensors)), key=lambda i: (_layer(names[i]), names[i].encode())):
        name, shape, current = tensors[i]
        if not _allows_quantization(name, shape, arch):
            choices[i] = TensorChoice(name, current, current, None)
            continue
        requested = default
        if default in FLOAT_TYPES:  # F32/F16/BF16 presets: no mix, no fallback
            choices[i] = TensorChoice(name, default, default, None, _needs_imatrix(name, default, ftype))
            continue
        if not pure:
            requested = _rules(state, requested, name, shape, _category(name))
        final, why = _fallback(name, shape[-1], requested)
        choices[i] = TensorChoice(name, final, requested, why, _needs_imatrix(name, final, ftype))
    return [choices[i] for i in range(len(tensors))]


def _canonical(ftype: str) -> str:
    up = ftype.upper()
    if up not in PRESETS:
        raise ValueError(f"unknown llama.cpp preset {ftype!r}; known: {', '.join(PRESETS)}")
    return _FTYPE_NAME[PRESETS[up]]


_BLK = re.compile(r"blk\.\s*([+-]?\d+)")


def _layer(name: str) -> int:
    """sscanf(name, "blk.%d.") as llama.cpp uses it: the block number, -1 for tensors outside the blocks."""
    m = _BLK.match(name)
    return int(m[1]) if m else -1


def _category(name: str) -> str:
    for cat, exact, part in CATEGORIES:
        if (exact and name in exact) or (part and part in name):
            return cat
    return "other"


def _allows_quantization(name: str, shape: tuple[int, ...], arch: str) -> bool:
    """tensor_allows_quantization: only 2-D/3-D weights (ggml_n_dims ignores trailing size-1 dims), minus a list."""
    n_dims = max((k + 1 for k, d in enumerate(reversed(shape)) if d != 1), default=1)
    # llama.cpp's `name.rfind("weight") == name.size() - 6` also holds, by unsigned wrap-around, for 5-char names
    if n_dims < 2 or not (name.endswith("weight") or len(name) == 5) or name in KEEP_NAMES:
        return False
    return not any(part in name for part in KEEP_IF_CONTAINS + KEEP_IF_CONTAINS_ARCH.get(arch, ()))


def _fallback(name: str, ncols: int, want: str) -> tuple[str, str | None]:
    """tensor_type_fallback, with its warning as the reason."""
    block = BLOCK[want]
    if ncols % block == 0:
        return want, None
    if want in FALLBACK:
        got = FALLBACK[want]
    elif block <= 32:
        got = want  # already a 32-block type: nothing smaller to demote to, so F16 below
    else:
        raise ValueError(f"no tensor type fallback is defined for type {want} (tensor {name})")
    why = f"ncols {ncols} not divisible by {block} (required for type {want})"
    if ncols % BLOCK[got]:
        got, why = "F16", why + " (must use F16 due to unusual shape)"
    return got, f"{why} -> falling back to {got}"


def _needs_imatrix(name: str, qtype: str, ftype: str) -> bool:
    """tensor_requires_imatrix."""
    if name in IMATRIX_EMBEDDINGS:
        return False
    return qtype in IMATRIX_TYPES or (qtype == "Q2_K" and ftype == "Q2_K_S")


class _State:
    """quantize_state_impl: the model facts and running counters the rules read."""

    def __init__(self, ftype: str, arch: str, hp: dict, names: list[str], imatrix: bool):
        first = lambda v: v[0] if isinstance(v, (list, tuple)) else v  # noqa: E731 - hparams.n_head(0)
        self.ftype, self.arch, self.has_imatrix = ftype, arch, imatrix
        self.n_layer = int(hp["n_layer"])  # n_layer_all: ffn counters are measured against it, not tensor counts
        n_head, n_head_kv = int(first(hp.get("n_head", 0))), int(first(hp.get("n_head_kv", hp.get("n_head", 0))))
        self.n_gqa = n_head // n_head_kv if n_head_kv else 0
        self.n_expert = int(hp.get("n_expert", 0) or 0)
        n_main = self.n_layer - int(hp.get("n_layer_nextn", 0) or 0)
        self.is_70b = SEVENTY_B_LAYERS.get(arch) == n_main and (
            arch != "llama" or (self.n_expert != 8 and n_head != n_head_kv))
        cats = [_category(n) for n in names]
        self.n_attention_wv = sum(c in ATTN_V_LIKE for c in cats)
        self.tied_embeddings = "output" not in cats  # no output.weight: token_embd doubles as the output
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0

    def layer(self, counter: int, name: str) -> int:
        """layer_info: the running counter, except with experts (scattered tensors) the name's block number."""
        if self.n_expert <= 1:
            return counter
        m = _BLK.match(name)
        if not m:
            raise ValueError(f"Failed to determine layer for tensor {name}")
        i = int(m[1])
        if not 0 <= i < self.n_layer:
            raise ValueError(f"Bad layer {i} for tensor {name}. Must be in [0, {self.n_layer})")
        return i


def _rules(qs: _State, new: str, name: str, shape: tuple[int, ...], cat: str) -> str:
    """llama_tensor_get_type_impl, branch for branch."""
    ft, arch, n = qs.ftype, qs.arch, qs.n_layer
    if any(p in name for p in Q8_FLOOR_ARCH.get(arch, ())) and new not in FLOAT_TYPES:
        return "Q8_0"
    if cat == "output" or (qs.tied_embeddings and cat == "token_embd"):
        if ft == "MXFP4_MOE" or arch == "falcon" or shape[-1] % BLOCK[new]:
            return "Q8_0"
        if ft in OUTPUT_Q5_K:
            return "Q5_K"
        return new if new == "Q8_0" else "Q6_K"
    if ft == "MXFP4_MOE":  # expert tensors (3-D) MXFP4, the rest Q8_0
        is_3d = len(shape) >= 3 and shape[-3] > 1
        experts = arch != "bailingmoe3" or cat in ("ffn_up", "ffn_gate", "ffn_down")
        return "MXFP4" if is_3d and experts else "Q8_0"
    if cat == "token_embd":
        return TOKEN_EMBD.get(ft, new)
    if ft in IQ2_MIXES:
        low = "IQ3_S" if ft in ("IQ2_S", "IQ2_M") else "Q2_K"
        if cat in ATTN_V_LIKE:
            new = "Q4_K" if qs.n_gqa >= 4 or qs.n_expert >= 4 else low
            qs.i_attention_wv += 1
        elif qs.n_expert == 8 and cat == "attn_k":
            new = "Q4_K"
        elif cat == "ffn_down":
            if qs.i_ffn_down < n // 8:
                new = low
            qs.i_ffn_down += 1
        elif cat == "attn_output":
            if qs.n_expert == 8:
                new = "Q5_K"
            elif ft in ("IQ1_S", "IQ1_M"):
                new = "IQ2_XXS"
            elif ft in ("IQ2_S", "IQ2_M"):
                new = "IQ3_S"
        return new
    if cat in ATTN_V_LIKE:
        gqa4, i_wv = qs.n_gqa >= 4, qs.i_attention_wv
        if ft == "Q2_K":
            new = "Q4_K" if gqa4 else "Q3_K"
        elif ft == "Q2_K_S" and gqa4:
            new = "Q4_K"
        elif ft == "IQ3_XXS":
            new = "Q4_K" if gqa4 else "IQ3_S" if not qs.has_imatrix else "IQ3_XXS"
        elif ft in ("IQ3_XS", "IQ3_S") and gqa4:
            new = "Q4_K"
        elif ft == "IQ3_M":
            new = "Q4_K"
        elif ft == "Q3_K_M":
            new = "Q5_K" if i_wv < 2 else "Q4_K"
        elif ft == "Q3_K_L":
            new = "Q5_K"
        elif ft in ("IQ4_NL", "IQ4_XS") and gqa4:
            new = "Q5_K"
        elif ft in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_wv, qs.n_attention_wv):
            new = "Q6_K"
        elif ft == "Q4_K_S" and i_wv < 4:
            new = "Q5_K"
        if qs.is_70b and new in ("Q3_K", "Q4_K"):  # 8 heads share attn_v: more bits cost little
            new = "Q5_K"
        if qs.n_expert == 8:
            new = "Q8_0"
        qs.i_attention_wv += 1
        return new
    if cat == "attn_k":
        return "Q8_0" if qs.n_expert == 8 else ATTN_Q_K.get(ft, new)
    if cat == "attn_q":
        return ATTN_Q_K.get(ft, new)
    if cat == "ffn_down":
        i, falcon = qs.layer(qs.i_ffn_down, name), arch == "falcon"
        if ft == "Q2_K":
            new = "Q3_K"
        elif ft == "Q2_K_S":
            if i < n // 8:
                new = "Q4_K"
        elif ft == "IQ3_XXS" and not qs.has_imatrix:
            new = "Q4_K" if i < n // 8 else "Q3_K"
        elif ft == "Q3_K_M":
            new = "Q5_K" if i < n // 16 else "Q4_K" if not falcon or use_more_bits(i, n) else "Q3_K"
        elif ft == "IQ3_M" and (i < n // 8 or (qs.n_expert == 8 and use_more_bits(i, n))):
            new = "Q4_K"
        elif ft == "Q3_K_L":
            new = "Q4_K" if falcon else "Q5_K"
        elif ft == "Q4_K_M":
            if falcon:
                new = "Q6_K" if i < n // 16 else "Q5_K" if use_more_bits(i, n) else "Q4_K"
            elif use_more_bits(i, n):
                new = "Q6_K"
        elif i < n // 8 and ft in ("IQ4_NL", "IQ4_XS") and not qs.has_imatrix:
            new = "Q5_K"
        elif ft == "Q5_K_M" and use_more_bits(i, n):
            new = "Q6_K"
        elif ft == "Q4_K_S" and not falcon and i < n // 8:
            new = "Q5_K"
        elif ft in ("Q4_0", "Q5_0") and qs.has_imatrix and i < n // 8:  # guards the first ffn_down layers
            new = "Q4_1" if ft == "Q4_0" else "Q5_1"
        qs.i_ffn_down += 1
        return new
    if cat == "attn_output":
        if arch == "falcon":
            return "Q4_K" if ft == "Q3_K_L" else new
        if qs.n_expert == 8:
            return "Q5_K" if ft in ATTN_OUTPUT_8_EXPERTS_Q5_K else new
        return ATTN_OUTPUT.get(ft, new)
    if cat == "attn_qkv":
        return ATTN_QKV.get(ft, new)
    if cat in ("ffn_gate", "ffn_up"):
        counter = "i_" + cat
        i = qs.layer(getattr(qs, counter), name)
        if ft == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
            new = "IQ3_XXS"
        setattr(qs, counter, getattr(qs, counter) + 1)
    return new
