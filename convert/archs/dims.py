"""The model configuration as a typed, bounded view, checked once when a model is opened: the counts that drive
loops and allocations (layers, heads, vocabulary, experts) are positive integers within bounds and agree with the
tensors the files actually hold, and every block holds the same tensors at the same shapes. A flipped bit in
block_count or a config.json that lies then fails here, in one line, instead of looping for minutes or reaching
llama.cpp with a tensor missing."""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from gguf import MODEL_TENSOR

from modelport.formats.errors import BadInput, ModelportError
from modelport.formats.model import TensorRef

from .base import Arch, hub_layout

# upper bounds well above any published model (Llama 3.1 405B: 126 layers, 128 heads, 16384 hidden, 128256 vocab)
BOUNDS = {"num_hidden_layers": 1 << 12, "num_attention_heads": 1 << 12, "num_key_value_heads": 1 << 12,
          "head_dim": 1 << 14, "hidden_size": 1 << 18, "intermediate_size": 1 << 20, "vocab_size": 1 << 23}
REQUIRED = ("num_hidden_layers", "num_attention_heads", "hidden_size")
MAX_EXPERTS = 1 << 12
BLOCK = re.compile(r"(?:^|\.)(\d+)\.")  # the block number: the first numeric part of a tensor name
# the tensors whose rows the configuration fixes: kind -> (config keys whose product is the row count)
ROWS = {MODEL_TENSOR.TOKEN_EMBD: ("vocab_size",), MODEL_TENSOR.ATTN_Q: ("num_attention_heads", "head_dim"),
        MODEL_TENSOR.ATTN_K: ("num_key_value_heads", "head_dim"), MODEL_TENSOR.ATTN_V: ("num_key_value_heads",
                                                                                     "head_dim")}


@dataclass(frozen=True)
class Dims:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int | None
    experts: int


def normalized(arch: Arch, config: object, where: Path | str | None) -> dict:
    """The family's normalised config, every count a bounded positive integer; else BadInput naming `where`."""
    if not isinstance(config, dict):
        raise BadInput(where, "the model configuration is not a JSON object")
    _check_counts(config, where, required=())  # as given, so the message names the culprit, not what follows
    try:
        cfg = arch.normalize(hub_layout(config, arch.t5_names))
    except ModelportError:
        raise
    except KeyError as e:
        raise BadInput(where, f"the {arch.name} configuration has no {e.args[0]!r}") from None
    except (TypeError, ValueError, ZeroDivisionError, AttributeError, OverflowError) as e:
        raise BadInput(where, f"the {arch.name} configuration is inconsistent: {e}"[:300]) from None
    _check_counts(cfg, where, REQUIRED)
    if cfg["num_attention_heads"] % (cfg.get("num_key_value_heads") or 1):
        raise BadInput(where, f"num_attention_heads {cfg['num_attention_heads']} is not a multiple of "
                              f"num_key_value_heads {cfg['num_key_value_heads']}")
    experts = arch.n_experts(cfg)
    if type(experts) is not int or not 0 <= experts <= MAX_EXPERTS:
        raise BadInput(where, f"configuration says {experts!r} experts; expected an integer in 0..{MAX_EXPERTS}")
    return cfg


def _check_counts(cfg: dict, where, required: tuple[str, ...]) -> None:
    for key, bound in BOUNDS.items():
        value = cfg.get(key)
        if value is None and key not in required:
            continue
        if type(value) is not int or not 0 < value <= bound:
            raise BadInput(where, f"configuration {key} is {value!r}"[:120] + f"; expected an integer in 1..{bound}")


def dims(arch: Arch, cfg: dict) -> Dims:
    heads = cfg["num_attention_heads"]
    return Dims(cfg["num_hidden_layers"], heads, cfg.get("num_key_value_heads") or heads,
                cfg.get("head_dim") or cfg["hidden_size"] // heads, cfg["hidden_size"], cfg.get("vocab_size"),
                arch.n_experts(cfg))


def check_tensors(arch: Arch, cfg: dict, tensors: Mapping[str, TensorRef], where: Path | str | None) -> None:
    """The tensors agree with the normalised config: as many blocks as it has layers, each block holding what the
    others hold at the same shapes, and the rows of the embedding and Q/K/V projections as the config says."""
    if not tensors:
        raise BadInput(where, "holds no tensors")
    blocks: dict[str, dict[int, tuple[int, ...]]] = defaultdict(dict)  # name with {bid} -> block -> shape
    for name, ref in tensors.items():
        m = BLOCK.search(name)
        if m:
            template = name[:m.start(1)] + "{bid}" + name[m.end(1):]
            blocks[template][int(m[1])] = ref.shape
    n = cfg["num_hidden_layers"]
    for template, held in sorted(blocks.items()):
        extra = max(held)
        if extra >= n:
            raise BadInput(where, f"tensor {template.format(bid=extra)!r} is in block {extra}, but the configuration "
                                  f"has {n} layers")
        missing = next((b for b in range(n) if b not in held), None)
        if missing is not None:
            raise BadInput(where, f"tensor {template.format(bid=missing)!r} is missing: the configuration has {n} "
                                  f"layers and the other blocks hold it")
        shapes = set(held.values())
        if len(shapes) > 1:
            raise BadInput(where, f"tensor {template!r} has different shapes across blocks: {sorted(shapes)}")
    if n and not blocks:
        first = next((t for t in (arch.tensors_for(cfg) if arch.tensors_for else arch.tensors) if "{bid}" in t), "")
        raise BadInput(where, f"tensor {first.format(bid=0)!r} is missing: the configuration has {n} layers and the "
                              f"files hold none")
    kinds = {}
    for hf, (kind, native) in arch.name_map(n, cfg).items():
        kinds[hf] = kinds[native] = kind
    d = dims(arch, cfg)
    sizes = {"vocab_size": d.vocab, "num_attention_heads": d.heads, "num_key_value_heads": d.kv_heads,
             "head_dim": d.head_dim}
    for name, ref in tensors.items():
        keys = ROWS.get(kinds.get(name))
        if not keys or len(ref.shape) != 2 or any(sizes[k] is None for k in keys):
            continue
        rows = 1
        for k in keys:
            rows *= sizes[k]
        if ref.shape[0] != rows:
            raise BadInput(where, f"tensor {name!r} has shape {list(ref.shape)}; the configuration ("
                                  f"{', '.join(f'{k} {sizes[k]}' for k in keys)}) gives {rows} rows")
