"""Execution providers as `--target`s: what each runs (operator sets, quantized weights, float types), the defaults it
runs well, and where each fact comes from: run here (a test names it) or the provider's documentation (not checked
here). `--target` fills the options a user left out from its row and refuses (exit 3) what the provider cannot run."""
from __future__ import annotations

from dataclasses import dataclass, field

from modelport.formats.errors import Unsupported

DOCS_ONLY = "from docs, not checked here"


@dataclass(frozen=True)
class Target:
    name: str
    provider: str  # onnxruntime's execution provider
    ops: tuple[str, ...]  # operator sets it runs, the one it runs best first
    quant: dict[str, tuple[str, ...]] = field(default_factory=dict)  # op set -> the --quant values it runs in it
    dtype: str | None = None  # default float type (None: the source's)
    symmetric: bool = False  # 4-bit weights without zero points only
    floats: dict[str, tuple[str, ...]] = field(default_factory=dict)  # op set -> the only --dtype values it runs there
    checked: str = DOCS_ONLY  # what was run here, and by which test
    source: str = ""  # the documentation the row follows

    def row(self) -> dict:
        return {"target": self.name, "provider": self.provider, "ops": list(self.ops),
                "quant": {ops: list(q) for ops, q in self.quant.items()}, "dtype": self.dtype,
                "symmetric": self.symmetric, "floats": {ops: list(f) for ops, f in self.floats.items()},
                "checked": self.checked, "source": self.source}

    def runs(self) -> str:
        """What it runs, for refusals: `--ops ort (--quant int4, int8), --ops portable`."""
        return ", ".join(f"--ops {o}" + (f" (--quant {', '.join(self.quant[o])})" if self.quant.get(o) else "")
                         for o in self.ops)


ORT_KERNELS = "https://github.com/microsoft/onnxruntime/blob/main/docs/OperatorKernels.md"
TARGETS = {t.name: t for t in (
    Target("cpu", "CPUExecutionProvider", ("ort", "portable", "qdq"), {"ort": ("int4", "int8"),
                                                                       "qdq": ("int4", "int8")},
           checked="run here: onnxruntime 1.32 CPU, every op set and quantization (tests/test_onnx_export.py, "
                   "test_onnx_quant.py, test_onnx_qdq.py); it fuses DequantizeLinear -> MatMul into MatMulNBits",
           source=ORT_KERNELS),
    Target("cuda", "CUDAExecutionProvider", ("ort", "portable"), {"ort": ("int4", "int8")}, "f16",
           floats={"ort": ("f16", "bf16")},
           checked="run here on a lent NVIDIA H200 (onnxruntime-gpu 1.31.1, CUDA 13; bench/cuda_ep.py): --target cuda "
                   "f16, int4 and --ops portable exports of the tiny llama, every GroupQueryAttention and MatMulNBits "
                   "placed on CUDA, logits against the CPU EP within mean KL 8.1e-6, the same greedy tokens; f32 "
                   "activations put GroupQueryAttention back on the CPU (its CUDA kernel is f16/bf16 only)",
           source=ORT_KERNELS + " (MatMulNBits, GroupQueryAttention, SimplifiedLayerNormalization for CUDA)"),
    Target("tensorrt", "TensorrtExecutionProvider", ("portable", "qdq"), {"qdq": ("int4",)}, "f16", symmetric=True,
           source="https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/"
                  "quantized-types-explicit-quantization.html (INT4 weights through DequantizeLinear, packed two to a "
                  "byte); Torch-TensorRT's INT4 weight-only example: TensorRT's IDequantizeLayer rejects non-zero INT4 "
                  "zero points"),
    Target("rocm", "ROCMExecutionProvider", ("portable",), {}, "f16",
           source="https://onnxruntime.ai/docs/execution-providers/ROCm-ExecutionProvider.html (deprecated in favour "
                  "of MIGraphX; no documented contrib-op or 4-bit coverage to rely on)"),
    Target("migraphx", "MIGraphXExecutionProvider", ("portable",), {}, "f16",
           source="https://rocm.docs.amd.com/projects/AMDMIGraphX/en/docs-7.2.2/dev/onnx_operators.html (operators up "
                  "to opset 19; data types without INT4: the opset-21 qdq set is not among them)"),
    Target("directml", "DmlExecutionProvider", ("ort", "qdq", "portable"), {"ort": ("int4",), "qdq": ("int4", "int8")},
           "f16", source="https://github.com/microsoft/onnxruntime/pull/20308 (DML EP MatMulNBits); "
                         "https://learn.microsoft.com/en-us/windows/ai/directml/dml-feature-level-history (feature "
                         "level 6.3: INT4/UINT4 DequantizeLinear, INT4 dequantize + GEMM fusion)"),
    Target("coreml", "CoreMLExecutionProvider", ("portable",), {}, None,
           source="https://onnxruntime.ai/docs/execution-providers/CoreML-ExecutionProvider.html (standard operators; "
                  "no contrib ops, no documented block-wise 4-bit DequantizeLinear)"),
    Target("openvino", "OpenVINOExecutionProvider", ("qdq", "portable"), {"qdq": ("int4", "int8")}, None,
           checked="run here: OpenVINO 2026.4 CPU (its own runtime, the `openvino` validate runtime) on portable "
                   "and qdq int4/int8 graphs (tests/test_onnx_qdq.py); the ort set's GroupQueryAttention does not "
                   "load in it",
           source="https://onnxruntime.ai/docs/execution-providers/OpenVINO-ExecutionProvider.html"),
    Target("qnn", "QNNExecutionProvider", ("qdq", "portable"), {"qdq": ("int4", "int8")}, "f16", symmetric=True,
           source="https://onnxruntime.ai/docs/execution-providers/QNN-ExecutionProvider.html (HTP backend: QDQ "
                  "models, fp16 precision for float ones)"),
    Target("webgpu", "WebGpuExecutionProvider", ("ort", "portable"), {"ort": ("int4",)}, "f16",
           source="https://github.com/microsoft/onnxruntime/releases/tag/plugin-ep-webgpu%2Fv0.1.0 "
                  "(GroupQueryAttention, MatMulNBits kernels on WebGPU)"),
)}


def rows() -> list[dict]:
    return [t.row() for t in TARGETS.values()]


def apply(name: str, options: dict, dst) -> tuple[dict, list[dict]]:
    """`options` with the target's defaults where the user gave none (op set, dtype, zero points), and a note per
    default taken; Unsupported (exit 3) naming what it runs when the op set or quantization asked for is not."""
    t = TARGETS[name]
    out, notes, quant = dict(options), [], options.get("quant")
    if "ops" not in out:
        out["ops"] = next((o for o in t.ops if quant in t.quant.get(o, ())), None) if quant else t.ops[0]
        if out["ops"] is None:
            raise Unsupported(dst, f"--target {name} ({t.provider}) runs no --quant {quant}; it runs {t.runs()}")
        notes.append({"name": dst.name, "fallback": f"--target {name}: --ops {out['ops']}"})
    if out["ops"] not in t.ops:
        raise Unsupported(dst, f"--target {name} ({t.provider}) does not run --ops {out['ops']}; it runs {t.runs()}")
    if quant and quant not in t.quant.get(out["ops"], ()):
        raise Unsupported(dst, f"--target {name} ({t.provider}) does not run --quant {quant} with --ops "
                               f"{out['ops']}; it runs {t.runs()}")
    if t.dtype and "dtype" not in out:
        out["dtype"] = t.dtype
        notes.append({"name": dst.name, "fallback": f"--target {name}: --dtype {t.dtype}"})
    dtype, floats = str(out.get("dtype")).lower(), t.floats.get(out["ops"])
    if floats and dtype not in floats:
        raise Unsupported(dst, f"--target {name} ({t.provider}) runs --ops {out['ops']} in "
                               f"{' or '.join(f'--dtype {f}' for f in floats)} only, not --dtype {dtype}")
    if t.symmetric and quant:
        out["symmetric"] = True
        notes.append({"name": dst.name, "fallback": f"--target {name}: {quant} weights without zero points"})
    return out, notes
