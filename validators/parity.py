"""`validate`: run the reference and the candidate on their own runtimes over the same token ids (the reference's
tokenizer), compare logits per position, check each side's tokenizer, and gate the result."""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from modelport.convert import archs
from modelport.convert import codec as codecs
from modelport.convert.pivot import load as load_pivot
from modelport.formats.errors import BadInput, Unsupported
from modelport.formats.hashing import SourceHashes

from . import gates, isolated, memory, metrics, reference, runtimes, texts as builtin_texts

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


def _vocab(native) -> int:
    """The vocabulary, as the most rows of any matrix (the embedding's or the output's): for the logits' size."""
    return max((r.shape[0] for r in native.tensors.values() if len(r.shape) == 2), default=0)


class _Runner:
    """One side on its runtime: tokenizes with its own tokenizer, gives logits for given ids. `streamed`: the
    runtime's way of running a model without holding it (the safetensors reference)."""

    def __init__(self, side: Side, provider: str = DEFAULT_PROVIDER, streamed: bool = False,
                 runtime_name: str | None = None):
        runtime = runtimes.for_codec(codecs.get(side.format), runtime_name)
        self.open, self.sized = (runtime.streamed if streamed else runtime.open), runtime.sized
        self.side, self.provider, self.rt, self.n_ctx = side, provider, None, 0

    def tokenizer(self):
        if self.rt is None:
            self.rt = self.open(self.side.path, provider=self.provider, n_ctx=64, tokenizer_only=True)
        return self.rt

    def load(self, n_ctx: int):
        if self.sized and self.n_ctx < n_ctx:  # a runtime whose context is fixed when it loads
            self.close()
            self.rt, self.n_ctx = self.open(self.side.path, provider=self.provider, n_ctx=n_ctx), n_ctx
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


def _timed(progress, label: str, items: dict[str, list[int]], run):
    """run(name, ids) for each text, telling `progress` the side, the text and tokens per second."""
    for k, (name, ids) in enumerate(items.items(), 1):
        t0 = time.perf_counter()
        out = run(name, ids)
        dt = time.perf_counter() - t0
        if progress:
            progress(f"{label}: text {k}/{len(items)} {name}, {len(ids)} tokens in {dt:.1f} s "
                     f"({len(ids) / max(dt, 1e-9):.0f} tokens/s)")
        yield name, ids, out
        del out  # before the next text's logits exist: one text's at a time


def _need(ref, ref_side, ref_native, cand_native, texts, stream: bool | None, available: int | None):
    """Bytes each side needs (the reference held or streamed, the candidate as stored), and whether the reference
    streams: when asked to, or (None) when holding it would not fit."""
    tokens = min(MAX_TOKENS, max(len(t.encode("utf-8")) for t in texts.values()) + 2)  # a token is >= 1 byte
    needs = {}
    if cand_native is not None:
        needs["candidate as stored"] = memory.stored(_stored_bytes(cand_native)) + \
            memory.logits(tokens, _vocab(cand_native))
    if ref_native is None:  # a saved reference: its logits only
        return needs, False
    can_stream = runtimes.for_codec(codecs.get(ref_side.format)).streamed is not None
    held = memory.in_memory(ref_side.parameters) + memory.logits(tokens, _vocab(ref_native))
    if stream is None:
        stream = can_stream and available is not None and held > available
    if stream and not can_stream:
        raise Unsupported(ref, f"{ref_side.runtime} cannot stream a reference; it runs held in memory")
    if stream:
        largest = max(r.n_elements for r in ref_native.tensors.values())
        needs["reference streamed from its checkpoint"] = memory.streamed(largest) + \
            memory.logits(tokens, _vocab(ref_native))
    else:
        needs["reference held in fp32 (4 bytes per parameter)"] = held
    return needs, stream


def _run_reference(ref_side: Side, texts: dict[str, str], dst: Path, saving: bool, force: bool, provider: str,
                   streamed: bool, progress) -> None:
    """The reference over `texts` with its own tokenizer, each text's ids and logits written to `dst` (atomically
    and with the source's sha256s when `saving`, else a temporary file), then freed."""
    hashes = SourceHashes(load_pivot(ref_side.path).metadata["source_files"]) if saving else None  # in the background
    with reference.writing(dst, force, atomic=saving) as w:
        _reference_logits(ref_side, texts, w, provider, streamed, progress)
        w.finish(asdict(ref_side), dict(i.split(":", 1) for i in hashes.text().split(",")) if hashes else {})


def _reference_logits(ref_side: Side, texts: dict[str, str], writer, provider: str, streamed: bool, progress):
    r = _Runner(ref_side, provider, streamed)
    label = f"reference ({ref_side.runtime}{', streamed' if streamed else ''})"
    if progress:
        progress(f"{label}: loading {ref_side.path}")
    ids = {name: r.tokenizer().tokenize(t)[:MAX_TOKENS] for name, t in texts.items()}
    if any(len(v) < 2 for v in ids.values()):
        raise BadInput(None, "every text needs at least two tokens")
    n_ctx = max(map(len, ids.values())) + 16
    for name, v, logits in _timed(progress, label, ids, lambda name, v: r.load(n_ctx).logits(v)):
        writer.add(name, texts[name], v, logits)
        del logits
    r.close()


def save_reference(ref: str | Path, dst: str | Path, texts: dict[str, str] | None = None, force: bool = False,
                   provider: str = DEFAULT_PROVIDER, stream: bool | None = None, check_memory: bool = True,
                   progress: Callable[[str], None] | None = None) -> Path:
    """Run REF once over `texts` (default: the built-in ones) and save its ids and logits to `dst` (.mpref)."""
    ref, dst = Path(ref), Path(dst)
    if reference.is_saved(ref):
        raise BadInput(ref, "is already a saved reference")
    ref_side, ref_native = describe(ref, provider)
    texts = texts or builtin_texts.builtin()
    available = memory.available_bytes() if check_memory else None
    needs, streamed = _need(ref, ref_side, ref_native, None, texts, stream, available)
    memory.check(needs, available)
    _run_reference(ref_side, texts, dst, True, force, provider, streamed, progress)
    return dst


def validate(ref: str | Path, cand: str | Path, texts: dict[str, str] | None = None, max_kl: float | None = None,
             min_top1: float | None = None, max_ppl_ratio: float | None = None, check_memory: bool = True,
             provider: str = DEFAULT_PROVIDER, save_reference: str | Path | None = None, force: bool = False,
             stream: bool | None = None, progress: Callable[[str], None] | None = None,
             runtime: str | None = None) -> Report:
    """Reference vs candidate over `texts` (default: the built-in ones, or a saved reference's own), gated by the
    candidate type's limits with any given overrides; an ONNX side runs in onnxruntime on `provider`, the
    candidate in `runtime` when given (one its format lists: ONNX in openvino).

    The sides run in turn: the reference's ids and logits go to a file (`save_reference`, else a temporary one)
    and the reference is freed before the candidate loads (a streamed one runs in a child process). REF may be a
    saved reference (.mpref): then only the candidate runs. `stream` (None: when holding the reference would not fit) runs a safetensors reference module
    by module from its checkpoint; the figures are the same either way."""
    t0 = time.perf_counter()
    ref, cand = Path(ref), Path(cand)
    saved = reference.Saved(ref) if reference.is_saved(ref) else None
    ref_side, ref_native = (Side(**saved.side), None) if saved else describe(ref, provider)
    cand_side, cand_native = describe(cand, provider, runtime)
    texts = saved.check_texts(texts) if saved else texts or builtin_texts.builtin()
    available = memory.available_bytes() if check_memory else None
    needs, streamed = _need(ref, ref_side, ref_native, cand_native, texts, stream, available)
    memory.check(needs, available)
    lim, tier = gates.limits(cand_side.type, {"max_kl": max_kl, "min_top1": min_top1, "max_ppl_ratio": max_ppl_ratio})

    with tempfile.TemporaryDirectory(prefix="modelport-reference-") as tmp:
        if saved is None:
            target = Path(save_reference) if save_reference else Path(tmp) / f"reference{reference.SUFFIX}"
            # streamed (memory is tight): in a process of its own, which gives back all it held when it ends
            run = partial(isolated.run, _run_reference) if streamed else _run_reference
            run(ref_side, texts, target, bool(save_reference), force, provider, streamed, progress=progress)
            saved = reference.Saved(target)
        try:
            rows, per_pos, all_pos = _run_candidate(saved, cand, cand_side, provider, progress, runtime)
        finally:
            saved.close()
    overall = metrics.summarize({k: np.concatenate([p[k] for p in all_pos]) for k in all_pos[0]})
    results = gates.evaluate(overall, [t["name"] for t in rows if not t["tokenizer"]["match"]], lim)
    failed = [g for g, v in results.items() if not v["passed"]]
    return Report(SCHEMA, not failed, failed, ref_side, cand_side, tier, results, overall, rows,
                  round(time.perf_counter() - t0, 3), per_pos)


def _run_candidate(saved: "reference.Saved", cand: Path, cand_side: Side, provider: str, progress,
                   runtime: str | None = None):
    """The candidate over the saved reference's ids, one text's logits on each side at a time."""
    c = _Runner(cand_side, provider, runtime_name=runtime)
    ids, texts = saved.ids, saved.texts
    n_ctx = max(map(len, ids.values())) + 16
    label = f"candidate ({cand_side.runtime})"
    if progress:
        progress(f"{label}: loading {cand_side.path}")
    cand_ids = {name: c.load(n_ctx).tokenize(t)[:MAX_TOKENS] for name, t in texts.items()}
    vocab, cand_vocab = saved.vocab, c.load(n_ctx).logits([0]).shape[-1]  # before ids it may not have
    if vocab != cand_vocab:
        raise BadInput(cand, f"vocabulary sizes differ: reference {vocab}, candidate {cand_vocab} (a reference "
                             "from another tokenizer)")
    rows, per_pos, all_pos = [], {}, []
    for name, v, cl in _timed(progress, label, ids, lambda name, v: c.load(n_ctx).logits(v)):
        pos = metrics.per_position(saved.logit_rows(name, metrics.ROWS), cl, v)
        del cl
        all_pos.append(pos)
        per_pos[name] = pos["kl"].tolist()
        rows.append({"name": name, "tokens": len(v), **metrics.summarize(pos),
                     "tokenizer": {"match": cand_ids[name] == v, "ref_tokens": len(v),
                                   "cand_tokens": len(cand_ids[name]), "first_mismatch": _mismatch(v, cand_ids[name])}})
    c.close()
    return rows, per_pos, all_pos
