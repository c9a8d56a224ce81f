"""MLX tensor names: the HF names after mlx-lm's `sanitize` (mlx_lm/models/<family>.py, mlx-lm 0.29.1). They are
the HF names except that a tied output head is left out and MoE experts are stacked per layer into `switch_mlp`
tensors [n_experts, rows, cols] (mixtral's w1 / w2 / w3 become gate_proj / down_proj / up_proj)."""
from __future__ import annotations

from modelport.convert import archs

# the stacked HF name's part (convert.experts, gguf-py's names) -> mlx-lm's switch_mlp part
SWITCH = {".block_sparse_moe.experts.w1.": ".block_sparse_moe.switch_mlp.gate_proj.",
          ".block_sparse_moe.experts.w2.": ".block_sparse_moe.switch_mlp.down_proj.",
          ".block_sparse_moe.experts.w3.": ".block_sparse_moe.switch_mlp.up_proj.",
          **{f".mlp.experts.{p}.": f".mlp.switch_mlp.{p}." for p in ("gate_proj", "up_proj", "down_proj")}}
HEAD = "lm_head.weight"


def _replace(name: str, table: dict[str, str]) -> str:
    for a, b in table.items():
        if a in name:
            return name.replace(a, b)
    return name


def to_mlx(name: str) -> str:
    """A stacked or plain HF name as mlx-lm names it."""
    return _replace(name, SWITCH)


def from_mlx(name: str) -> str:
    """An MLX name (scales and biases too) as the stacked or plain HF name."""
    return _replace(name, {b: a for a, b in SWITCH.items()})


def families() -> list[str]:
    """The families mlx-lm runs (their `Arch.mlx`), sorted."""
    return sorted(a.name for a in archs.registry().values() if a.mlx)


def tied(config: dict) -> bool:
    return bool(config.get("tie_word_embeddings", False))


def expert_groups(arch: archs.Arch, config: dict) -> dict[str, list[str]]:
    """Stacked HF module path (no `.weight`) -> its per-expert module paths, in expert order, for every layer."""
    n_blocks, n_experts = arch.normalize(config)["num_hidden_layers"], arch.n_experts(config)
    return {stacked.format(bid=b).removesuffix(".weight"):
            [one.format(bid=b, xid=x).removesuffix(".weight") for x in range(n_experts)]
            for stacked, one in arch.experts.items() for b in range(n_blocks)}
