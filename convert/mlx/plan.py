"""Which layers mlx_lm.convert quantizes, and how (mlx-lm 0.31: utils.quantize_model, convert.py
mixed_quant_predicate_builder, the models' own quant_predicate), as data and one small function.

A layer is quantized when it is a Linear, Embedding or SwitchLinear (here: a 2-D or stacked 3-D `.weight`) whose
rows are a multiple of the group size. A recipe, or else the family's own predicate, may then give it other
parameters; those layers are listed by module path in config.json's quantization section."""
from __future__ import annotations

from modelport.formats.errors import Unsupported

UNIFORM = {f"{b}bit": b for b in (2, 3, 4, 5, 6, 8)}
RECIPES = {"mixed_2_6": (2, 6), "mixed_3_4": (3, 4), "mixed_3_6": (3, 6), "mixed_4_6": (4, 6)}  # (low, high) bits
QUANTS = tuple(UNIFORM) + tuple(RECIPES)
GROUP_SIZES = ("32", "64", "128")
# a family's own quant_predicate: module path suffix -> parameters (qwen3_moe keeps its routers at 8 bits)
FAMILY_RULES = {"qwen3_moe": (("mlp.gate", {"group_size": 64, "bits": 8}),)}
# mixed recipes give these layers more bits where a layer uses more bits (llama.cpp's Q4_K_M choices), lm_head always
MORE_BITS = ("v_proj", "v_a_proj", "v_b_proj", "down_proj")
HEAD = "lm_head"
MODE = "affine"  # mlx's quantization mode for integer bits with scales and biases, the one mlx-lm's recipes use


RECIPE_TOP_BITS = 4  # mlx_lm.convert's --q-bits default, written as the top-level bits under a recipe


def top_bits(quant: str) -> int:
    """The bits of config.json's top-level quantization entry. Under a recipe every quantized layer has its own
    entry, so mlx-lm never reads it; mlx_lm.convert writes its --q-bits default there, and so do we."""
    return UNIFORM.get(quant, RECIPE_TOP_BITS)


def _recipe(quant: str, group: int, modules: list[str], n_layers: int):
    low, high = RECIPES[quant]
    down = [m for m in modules if "down_proj" in m]
    if not down:
        raise Unsupported(None, f"{quant} needs down_proj layers (mlx-lm's rule); this family has none")
    where = next(i for i, part in enumerate(down[0].split(".")) if part.isdigit())

    def params(path: str) -> dict:
        parts = path.split(".")
        index = int(parts[where]) if len(parts) > where else 0
        more = index < n_layers // 8 or index >= 7 * n_layers // 8 or (index - n_layers // 8) % 3 == 2
        bits = high if ((more and any(k in path for k in MORE_BITS)) or HEAD in path) else low
        return {"group_size": group, "bits": bits, "mode": MODE}  # mlx-lm 0.30+ names the mode per layer

    return params


def plan(family: str, quant: str, group: int, modules: dict[str, int], n_layers: int
         ) -> tuple[dict[str, tuple[int, int]], dict[str, dict]]:
    """Module path -> (bits, group) for each layer that gets quantized, given module path -> row length; and the
    per-layer entries config.json lists."""
    quantizable = [m for m, k in modules.items() if k % group == 0]
    rules = FAMILY_RULES.get(family, ())
    if quant in RECIPES:
        rule = _recipe(quant, group, list(modules), n_layers)
    elif rules:
        def rule(path: str) -> dict | None:
            return next((p for suffix, p in rules if path.endswith(suffix)), None)
    else:
        def rule(path: str) -> None:
            return None
    chosen, entries = {}, {}
    for m in quantizable:
        p = rule(m)
        if p is not None:
            entries[m] = p
        chosen[m] = (p["bits"], p["group_size"]) if p else (UNIFORM[quant], group)
    return chosen, entries
