"""`validate`: run the reference and the candidate on their own runtimes over the same token ids (the reference's
tokenizer), compare logits per position, check each side's tokenizer, and gate the result."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from modelport.convert import archs, onnx_import
from modelport.formats import registry
from modelport.formats.errors import BadInput, Unsupported

from . import gates, memory, metrics, texts as builtin_texts
from .runtimes import LlamaCpp, OnnxRuntime, Transformers, require_provider

SCHEMA = "modelport.validate/1"
MAX_TOKENS = 2048  # longer texts are cut here (the runtimes hold logits for every position)
DEFAULT_PROVIDER = "CPUExecutionProvider"


@dataclass
class Side:
    path: str
    format: str
    runtime: str
    type: str  # storage type: F32/F16/BF16 or the GGUF preset (Q4_K_M ...)
    parameters: int


@dataclass
class Report:
    """The same fields as `modelport validate --json` (schema modelport.validate/1, documented in the README)."""

    schema: str
    passed: bool
    failed_gates: list[str]
    reference: Side
    candidate: Side
    tier: str
    gates: dict[str, dict]
    overall: dict
    texts: list[dict]
    seconds: float
    kl_per_position: dict[str, list[float]] = field(default_factory=dict, repr=False)  # for plots; not in JSON

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("kl_per_position")
        return d


def _onnx_type(native) -> str:
    """INT4 / INT8 for MatMulNBits weights (their bits), else the float type most 2-D initializers have."""
    bits = [a.i for n in native.proto.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
            if a.name == "bits"]
    if bits:
        return f"INT{Counter(bits).most_common(1)[0][0]}"
    kinds = Counter(r.dtype for r in native.tensors.values() if len(r.shape) > 1)
    return kinds.most_common(1)[0][0] if kinds else "F32"


def _refuse_encoders(path: Path, families: list[archs.Arch]) -> None:
    """validate compares next-token distributions: an encoder (bert) has none to compare."""
    if families and not any(a.hf_class.endswith("ForCausalLM") for a in families):
        raise Unsupported(path, f"{families[0].name} is an encoder: validate compares the next-token distributions "
                                "of causal language models")


def describe(path: Path, provider: str = DEFAULT_PROVIDER) -> tuple[Side, object]:
    """What `path` is, its storage type and parameter count, and its pivot view; headers only."""
    fmt = registry.detect(path)
    native = fmt.read(path)
    gguf_arch = native.get("general.architecture") if fmt.name == "gguf" else None
    _refuse_encoders(path, [a for a in archs.registry().values()
                            if a.gguf_name == gguf_arch or (fmt.name != "gguf" and a.name == _model_type(native))])
    if fmt.name == "onnx":  # parameters as the HF model counts them: MatMulNBits blobs read back as weights
        require_provider(provider)  # before minutes of reference logits, not after
        if not (native.path.parent / "tokenizer.json").is_file():
            raise BadInput(path, "no tokenizer.json beside the ONNX model: validate tokenizes with the model's own "
                                 "tokenizer (convert to a folder, which holds it)")
        model = onnx_import.from_onnx(native, path)
        return Side(str(path), "onnx", f"onnxruntime {provider}", _onnx_type(native),
                    sum(r.n_elements for r in model.tensors.values())), native
    if fmt.name == "gguf":  # native names: a GGUF whose keys no longer map back (a defect) still validates
        kinds = Counter(r.dtype for r in native.tensors.values() if len(r.shape) > 1)
        kind = gates.file_type_name(native.get("general.file_type")) or kinds.most_common(1)[0][0]
        return Side(str(path), "gguf", "llama.cpp", kind, sum(r.n_elements for r in native.tensors.values())), native
    if not path.is_dir():
        raise BadInput(path, "transformers runs an HF folder (config.json, tokenizer, *.safetensors), not a bare "
                             ".safetensors file; pass its folder")
    kinds = Counter(r.result_dtype for r in native.tensors.values() if len(r.shape) > 1)
    kind = kinds.most_common(1)[0][0] if kinds else "F32"
    return Side(str(path), fmt.name, "transformers", kind, sum(r.n_elements for r in native.tensors.values())), native


def _model_type(native) -> str | None:
    """The HF model_type of an HF folder (the pivot) or of one of our ONNX models (its metadata)."""
    return getattr(native, "arch", None) or getattr(native, "metadata", {}).get("modelport.arch")


def _stored_bytes(native) -> int:
    return sum(r.stored.nbytes for r in native.tensors.values())


class _Runner:
    """One side on its runtime: tokenizes with its own tokenizer, gives logits for given ids."""

    def __init__(self, side: Side, provider: str = DEFAULT_PROVIDER):
        self.side, self.provider, self.rt, self.n_ctx = side, provider, None, 0

    def tokenizer(self):
        if self.rt is None:
            self.rt = LlamaCpp(self.side.path, n_ctx=64, vocab_only=True) if self.side.format == "gguf" \
                else OnnxRuntime(self.side.path, self.provider) if self.side.format == "onnx" \
                else Transformers(self.side.path)
        return self.rt

    def load(self, n_ctx: int):
        if self.side.format == "gguf" and self.n_ctx < n_ctx:
            self.close()
            self.rt, self.n_ctx = LlamaCpp(self.side.path, n_ctx=n_ctx), n_ctx
        return self.tokenizer()

    def close(self):
        if self.rt is not None and hasattr(self.rt, "close"):
            self.rt.close()
        self.rt, self.n_ctx = None, 0


def _mismatch(a: list[int], b: list[int]) -> dict | None:
    if a == b:
        return None
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return {"position": i, "ref_id": a[i] if i < len(a) else None, "cand_id": b[i] if i < len(b) else None}


def validate(ref: str | Path, cand: str | Path, texts: dict[str, str] | None = None, max_kl: float | None = None,
             min_top1: float | None = None, max_ppl_ratio: float | None = None, check_memory: bool = True,
             provider: str = DEFAULT_PROVIDER) -> Report:
    """Reference vs candidate over `texts` (default: the built-in ones), gated by the candidate type's limits
    with any given overrides; an ONNX side runs in onnxruntime on `provider`."""
    t0 = time.perf_counter()
    ref, cand = Path(ref), Path(cand)
    ref_side, _ = describe(ref, provider)
    cand_side, cand_native = describe(cand, provider)
    if check_memory:
        memory.check(ref_side.parameters, _stored_bytes(cand_native), memory.available_bytes())
    lim, tier = gates.limits(cand_side.type, {"max_kl": max_kl, "min_top1": min_top1, "max_ppl_ratio": max_ppl_ratio})
    texts = texts or builtin_texts.builtin()

    r, c = _Runner(ref_side, provider), _Runner(cand_side, provider)
    ids = {name: r.tokenizer().tokenize(t)[:MAX_TOKENS] for name, t in texts.items()}
    if any(len(v) < 2 for v in ids.values()):
        raise BadInput(None, "every text needs at least two tokens")
    n_ctx = max(map(len, ids.values())) + 16
    ref_logits = {name: r.load(n_ctx).logits(v) for name, v in ids.items()}  # then free the reference
    r.close()
    cand_ids = {name: c.load(n_ctx).tokenize(t)[:MAX_TOKENS] for name, t in texts.items()}
    rows, per_pos, all_pos = [], {}, []
    for name, v in ids.items():
        cl = c.load(n_ctx).logits(v)
        rl = ref_logits.pop(name)
        if rl.shape[-1] != cl.shape[-1]:
            raise BadInput(cand, f"vocabulary sizes differ: reference {rl.shape[-1]}, candidate {cl.shape[-1]}")
        pos = metrics.per_position(rl, cl, v)
        del rl, cl
        all_pos.append(pos)
        per_pos[name] = pos["kl"].tolist()
        rows.append({"name": name, "tokens": len(v), **metrics.summarize(pos),
                     "tokenizer": {"match": cand_ids[name] == v, "ref_tokens": len(v),
                                   "cand_tokens": len(cand_ids[name]), "first_mismatch": _mismatch(v, cand_ids[name])}})
    c.close()
    overall = metrics.summarize({k: np.concatenate([p[k] for p in all_pos]) for k in all_pos[0]})
    results = gates.evaluate(overall, [t["name"] for t in rows if not t["tokenizer"]["match"]], lim)
    failed = [g for g, v in results.items() if not v["passed"]]
    return Report(SCHEMA, not failed, failed, ref_side, cand_side, tier, results, overall, rows,
                  round(time.perf_counter() - t0, 3), per_pos)
