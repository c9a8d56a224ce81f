"""Mixture-of-experts tensors between the pivot and GGUF. Hugging Face keeps each expert's matrices as separate 2-D
tensors; GGUF keeps one 3-D tensor per layer and kind, [n_expert, rows, cols], the experts stacked in order as
convert_hf_to_gguf.py's LlamaModel (Mixtral) and Qwen2MoeModel do with torch.stack. Both ways stay lazy: a stacked
tensor streams its row blocks from the experts' own bytes, a split one is a byte range of the stacked tensor."""
from __future__ import annotations

from pathlib import Path

from modelport.formats.errors import BadInput, Unsupported
from modelport.formats.model import TensorRef

from .archs import Arch


def _groups(arch: Arch, n_blocks: int, n_experts: int) -> dict[str, list[str]]:
    """Stacked HF name -> its per-expert HF names, in expert order, for every layer."""
    return {stacked.format(bid=bid): [one.format(bid=bid, xid=x) for x in range(n_experts)]
            for stacked, one in arch.experts.items() for bid in range(n_blocks)}


def per_expert(arch: Arch, config: dict) -> list[str]:
    """Every per-expert HF tensor name of a model of this config (none without experts)."""
    if not arch.experts:
        return []
    groups = _groups(arch, arch.normalize(config)["num_hidden_layers"], arch.n_experts(config))
    return [one for ones in groups.values() for one in ones]


def stack(tensors: dict[str, TensorRef], arch: Arch, config: dict, path: Path | None = None) -> dict[str, TensorRef]:
    """The tensors with each layer's per-expert tensors replaced, where the first of them was, by their stack."""
    if not arch.experts:
        return tensors
    groups = _groups(arch, arch.normalize(config)["num_hidden_layers"], arch.n_experts(config))
    stacked_of = {one: stacked for stacked, ones in groups.items() for one in ones}
    out: dict[str, TensorRef] = {}
    for name, ref in tensors.items():
        stacked = stacked_of.get(name)
        if stacked is None:
            out[name] = ref
            continue
        if stacked in out:
            continue
        source = getattr(ref.stored, "path", path)  # the file with the layer's other experts
        missing = [one for one in groups[stacked] if one not in tensors]
        if missing:
            raise BadInput(source, f"expert tensor {missing[0]!r} is missing")
        parts = [tensors[one] for one in groups[stacked]]
        if any(p.transforms for p in parts):
            raise Unsupported(source, f"experts of {stacked!r} need transforms before stacking")
        if len({(p.dtype, p.shape) for p in parts}) > 1:
            raise BadInput(source, f"the experts of {stacked!r} differ in shape or dtype")
        out[stacked] = TensorRef.stack(parts)
    return out


def split(tensors: dict[str, TensorRef], arch: Arch, config: dict, path: Path | None = None) -> dict[str, TensorRef]:
    """The inverse of `stack`: each stacked tensor (HF-named) replaced, in place, by one tensor per expert."""
    if not arch.experts:
        return tensors
    groups = _groups(arch, arch.normalize(config)["num_hidden_layers"], arch.n_experts(config))
    out: dict[str, TensorRef] = {}
    for name, ref in tensors.items():
        if name not in groups:
            out[name] = ref
        elif len(ref.shape) != 3 or ref.shape[0] != len(groups[name]):
            raise BadInput(path, f"{name!r} has shape {ref.shape}, not {len(groups[name])} stacked experts")
        else:
            out.update(zip(groups[name], ref.unstack()))
    return out
