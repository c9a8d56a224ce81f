"""What modelport does with each family, derived from the tables that decide it (the registered archs, the ONNX
graph builder's families, optimum's checked exports, the ONNX read-back walk, the quantization presets), so the
listing cannot drift from the code."""
from __future__ import annotations

from . import archs, onnx_graph, onnx_import, onnx_optimum, quant_plan

# llama.cpp's names per llama_ftype, aliases (Q4_K for Q4_K_M) left out
GGUF_QUANTS = tuple(n for n, v in quant_plan.PRESETS.items()
                    if n == next(m for m, w in quant_plan.PRESETS.items() if w == v))


def onnx_exporter(name: str) -> str | None:
    """'builder' (modelport's own graph), 'optimum' (its exporter, with the limits onnx_optimum lists) or None."""
    if name in onnx_graph.FAMILIES:
        return "builder"
    return "optimum" if name in onnx_optimum.EXPORTS else None


def family(name: str) -> dict:
    """One family's row: its names, the conversion paths it has and the quantization types on each."""
    arch = archs.registry()[name]
    exporter = onnx_exporter(name)
    paths = ["safetensors->gguf", "gguf->safetensors"]
    if exporter:
        paths += ["safetensors->onnx", "gguf->onnx"]
    if name in onnx_import.WALKED:
        paths += ["onnx->safetensors", "onnx->gguf"]
    return {"name": name, "hf_class": arch.hf_class, "gguf_arch": arch.gguf_name, "paths": paths,
            "onnx_export": exporter,
            "onnx_refused": [f"{lim.what}: {lim.why}" for lim in onnx_optimum.EXPORTS.get(name, ())],
            "quant": {"gguf": list(GGUF_QUANTS), "onnx": list(onnx_graph.QUANT_BITS) if exporter == "builder" else []}}


def families() -> list[dict]:
    return [family(name) for name in sorted(archs.registry())]
