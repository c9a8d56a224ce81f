"""`validate`: run the reference and the candidate on their own runtimes over the same token ids (the reference's
tokenizer), compare logits per position, check each side's tokenizer, and gate the result."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from modelport.convert import archs
from modelport.convert import codec as codecs
from modelport.formats.errors import BadInput, Unsupported

from . import gates, memory, metrics, runtimes, texts as builtin_texts

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


def _refuse_encoders(path: Path, families: list[archs.Arch]) -> None:
    """validate compares next-token distributions: an encoder (bert) has none to compare."""
    if families and not any(a.hf_class.endswith("ForCausalLM") for a in families):
        raise Unsupported(path, f"{families[0].name} is an encoder: validate compares the next-token distributions "
                                "of causal language models")


def describe(path: Path, provider: str = DEFAULT_PROVIDER, runtime_name: str | None = None) -> tuple[Side, object]:
    """What `path` is, its storage type and parameter count, and its native view; headers only. The codec says
    all of it; the runtime is the one it names (or `runtime_name`, one of the others it lists)."""
    codec = codecs.detect(path)
    native = codec.open(path)
    _refuse_encoders(path, codec.families(native))
    runtime = runtimes.for_codec(codec, runtime_name)
    runtime.check(provider)  # before minutes of reference logits, not after
    codec.runnable(native, path)
    return Side(str(path), codec.name, runtime.label(provider), codec.storage_type(native),
                codec.parameters(native, path)), native


def _stored_bytes(native) -> int:
    return sum(r.stored.nbytes for r in native.tensors.values())


class _Runner:
    """One side on its runtime: tokenizes with its own tokenizer, gives logits for given ids."""

    def __init__(self, side: Side, provider: str = DEFAULT_PROVIDER, runtime_name: str | None = None):
        self.runtime = runtimes.for_codec(codecs.get(side.format), runtime_name)
        self.side, self.provider, self.rt, self.n_ctx = side, provider, None, 0

    def tokenizer(self):
        if self.rt is None:
            self.rt = self.runtime.open(self.side.path, provider=self.provider, n_ctx=64, tokenizer_only=True)
        return self.rt

    def load(self, n_ctx: int):
        if self.runtime.sized and self.n_ctx < n_ctx:  # a runtime whose context is fixed when it loads
            self.close()
            self.rt, self.n_ctx = self.runtime.open(self.side.path, provider=self.provider, n_ctx=n_ctx), n_ctx
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
             provider: str = DEFAULT_PROVIDER, runtime: str | None = None) -> Report:
    """Reference vs candidate over `texts` (default: the built-in ones), gated by the candidate type's limits
    with any given overrides; an ONNX side runs in onnxruntime on `provider`; the candidate in `runtime` when
    given (one its format lists: ONNX in openvino)."""
    t0 = time.perf_counter()
    ref, cand = Path(ref), Path(cand)
    ref_side, _ = describe(ref, provider)
    cand_side, cand_native = describe(cand, provider, runtime)
    if check_memory:
        memory.check(ref_side.parameters, _stored_bytes(cand_native), memory.available_bytes())
    lim, tier = gates.limits(cand_side.type, {"max_kl": max_kl, "min_top1": min_top1, "max_ppl_ratio": max_ppl_ratio})
    texts = texts or builtin_texts.builtin()

    r, c = _Runner(ref_side, provider), _Runner(cand_side, provider, runtime)
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
