"""The pivot to and from an MLX folder's native view: mlx-lm's names (names.py), quantized layers as MLX's weight,
scales and biases (affine.py) chosen as mlx_lm.convert chooses them (plan.py), config.json's quantization section."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from modelport.convert import archs, dtypes, experts
from modelport.formats.errors import Unsupported
from modelport.formats.mlx import QUANT_KEY, MlxContents
from modelport.formats.model import Model, TensorRef

from . import affine, names, plan

QUANT_CONFIG_KEY = "quantization_config"  # mlx-lm writes the section under HF's name too
WEIGHT = ".weight"


def _family(model: Model, path: Path | None) -> archs.Arch:
    arch = archs.for_hf(model.arch, path)
    if arch.mlx is None:
        raise Unsupported(path, f"mlx-lm has no model for {model.arch!r} here; MLX output takes "
                                f"{', '.join(names.families())}")
    return arch


def _modules(tensors: dict[str, TensorRef]) -> dict[str, int]:
    """Module path -> row length of every layer mlx-lm could quantize (Linear, Embedding, SwitchLinear)."""
    return {n.removesuffix(WEIGHT): r.shape[-1] for n, r in tensors.items() if n.endswith(WEIGHT) and len(r.shape) >= 2}


def _section(chosen: dict[str, tuple[int, int]], entries: dict[str, dict], top: tuple[int, int] | None) -> dict:
    bits, group = top or Counter(chosen.values()).most_common(1)[0][0]
    listed = {**{m: {"group_size": g, "bits": b} for m, (b, g) in chosen.items() if (b, g) != (bits, group)},
              **entries}
    return {"group_size": group, "bits": bits, "mode": plan.MODE, **dict(sorted(listed.items()))}


def to_mlx(model: Model, dtype: str | None, quant: str | None, group: int, path: Path | None = None
           ) -> tuple[Model, list[dict]]:
    """The pivot as an MLX folder's model (MLX names, quantized layers as weight/scales/biases) and notes on the
    tensors that were transcoded from GGUF blocks, dequantized or quantized again."""
    arch = _family(model, path)
    config = {k: v for k, v in model.config.items() if k not in (QUANT_KEY, QUANT_CONFIG_KEY)}
    stacked = experts.stack(model.tensors, arch, config, path)
    if names.tied(config):
        stacked.pop(names.HEAD, None)
    floats = dtypes.cast_model(Model(model.arch, config, stacked, model.tokenizer, model.generation_config,
                                     model.metadata), dtype)
    mlx_names = {n: names.to_mlx(n) for n in stacked}
    modules = _modules({mlx_names[n]: r for n, r in stacked.items()})
    source = {mlx_names[n].removesuffix(WEIGHT): r for n, r in stacked.items() if n.endswith(WEIGHT)}
    if quant:
        n_layers = arch.normalize(config)["num_hidden_layers"]
        chosen, entries = plan.plan(model.arch, quant, group, modules, n_layers)
        top = (plan.top_bits(quant), group)
    else:  # GGUF blocks MLX holds exactly stay quantized; nothing else is quantized
        chosen = {m: (affine.BLOCKS[source[m].result_dtype][0], affine.GGUF_GROUP) for m, k in modules.items()
                  if source[m].result_dtype in affine.BLOCKS and k % affine.GGUF_GROUP == 0}
        entries, top = {}, None
    out, notes = {}, []
    for name, ref in floats.tensors.items():
        mname = mlx_names[name]
        module = mname.removesuffix(WEIGHT)
        if module not in chosen or not mname.endswith(WEIGHT):
            if source.get(module) is not None and source[module].result_dtype not in dtypes.FLOATS \
                    and mname.endswith(WEIGHT):
                notes.append({"name": mname, "fallback": f"{source[module].result_dtype} dequantized"})
            out[mname] = ref
            continue
        bits, g = chosen[module]
        src_type = source[module].result_dtype
        if affine.BLOCKS.get(src_type, (None,))[0] == bits and g == affine.GGUF_GROUP:
            parts = affine.layer(source[module], bits, g, "F32", affine.transcoder(src_type))
            notes.append({"name": mname, "fallback": f"{src_type} transcoded to {bits}-bit group {g}, F32 scales"})
        else:
            float_type = ref.result_dtype
            parts = affine.layer(ref, bits, g, float_type, affine.quantizer(bits, g, float_type))
            if src_type not in dtypes.FLOATS:
                notes.append({"name": mname, "fallback": f"{src_type} dequantized and quantized to {bits}-bit"})
        out.update(zip((f"{module}.weight", f"{module}.scales", f"{module}.biases"), parts))
    cfg = dict(floats.config)
    if chosen:
        cfg[QUANT_KEY] = cfg[QUANT_CONFIG_KEY] = _section(chosen, entries, top)
    return Model(model.arch, cfg, out, model.tokenizer, model.generation_config, model.metadata), notes


def from_mlx(contents: MlxContents, path: Path) -> Model:
    """An MLX folder as the pivot: HF names, experts one by one, quantized layers as the floats MLX computes with."""
    native = contents.model
    config = {k: v for k, v in native.config.items() if k not in (QUANT_KEY, QUANT_CONFIG_KEY)}
    arch = archs.for_hf(config.get("model_type", ""), path)
    per_expert = names.expert_groups(arch, config) if arch.experts else {}
    tensors: dict[str, TensorRef] = {}
    for name, ref in native.tensors.items():
        module, part = name.rsplit(".", 1)
        if module not in contents.quantized:
            tensors[names.from_mlx(name)] = ref
            continue
        if part != "weight":
            continue
        bits, group = contents.quantized[module]
        parts = [native.tensors[f"{module}.{p}"] for p in ("weight", "scales", "biases")]
        hf = names.from_mlx(name).removesuffix(WEIGHT)
        if hf in per_expert:
            for one, *three in zip(per_expert[hf], *(p.unstack() for p in parts)):
                tensors[one + WEIGHT] = affine.dequantized(*three, bits, group)
        else:
            tensors[hf + WEIGHT] = affine.dequantized(*parts, bits, group)
    tensors = experts.split(tensors, arch, config, path)
    return Model(arch.name, config, tensors, native.tokenizer, native.generation_config, native.metadata)
