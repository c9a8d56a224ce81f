"""The pivot <-> GGUF's native view: names through the family's map, hparams through its table, tokenizer through
convert.tokenizer, and llama.cpp's dtype rules (1-D tensors and norms stay F32)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_VERSION, MODEL_TENSOR, GGUFValueType, Keys

from modelport.formats import jsonfile
from modelport.formats.errors import BadInput, Unsupported
from modelport.formats.gguf import GGUFContents
from modelport.formats.model import MemorySlice, Model, TensorRef

from modelport.convert import archs, experts, provenance
from modelport.convert.archs import dims
from modelport.convert.gguf import quant_plan
from modelport.convert.gguf import sentence_transformers
from modelport.convert.gguf import tokenizer
from modelport.convert.dtypes import FILE_TYPES, FLOATS, TORCH_NAMES, cast
from modelport.convert.gguf.imatrix import Imatrix
from modelport.convert.gguf.quantize import quantize

KV = tuple[str, object, GGUFValueType, "GGUFValueType | None"]
CONFIG_KEY = provenance.CONFIG
SKIP_HF = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved; recomputed by every runtime
FILE_TYPE_DTYPES = {int(v): k for k, v in FILE_TYPES.items()}
# kinds llama.cpp's converter always writes F32 whatever the out type (ModelBase.prepare_tensors), of the families here
F32_KINDS = frozenset({MODEL_TENSOR.FFN_GATE_INP, MODEL_TENSOR.FFN_GATE_INP_SHEXP, MODEL_TENSOR.POS_EMBD,
                       MODEL_TENSOR.TOKEN_TYPES})


def default_gguf_dtype(model: Model) -> str:
    """llama.cpp's `--outtype auto`: BF16 stays BF16, anything else becomes F16."""
    return "BF16" if lossless_dtype(model) == "BF16" else "F16"


def lossless_dtype(model: Model) -> str:
    """The precision of a lossless GGUF of this model, which llama-quantize would start from."""
    first = next((r for r in model.tensors.values() if len(r.shape) > 1), None)
    return first.result_dtype if first is not None and first.result_dtype in FLOATS else "F32"


def _hparams(arch: archs.Arch, cfg: dict) -> dict:
    """What llama.cpp's type choice looks at, from the normalised HF config."""
    return {"n_layer": cfg["num_hidden_layers"], "n_head": cfg["num_attention_heads"],
            "n_head_kv": cfg["num_key_value_heads"], "n_embd": cfg["hidden_size"],
            "n_ff": cfg.get("intermediate_size", 0), "n_expert": arch.n_experts(cfg)}


def _mapped(ref: TensorRef, fn, cfg: dict) -> TensorRef:
    """`ref` through a family transform; one that changes the shape (GPT-2's Conv1D transpose) says how with a
    `shape(shape) -> shape` attribute."""
    shape = fn.shape(ref.shape) if hasattr(fn, "shape") else None
    return ref.map(lambda a: fn(a, cfg), shape=shape)


def to_gguf(model: Model, dtype: str | None, provenance: dict[str, str], path: Path | None = None,
            quant: str | None = None, imatrix: Imatrix | None = None
            ) -> tuple[str, list[KV], list[tuple[str, TensorRef]], list[dict]]:
    """GGUF arch, metadata, tensors (lazily cast or quantized) and, when quantizing, each tensor's type choice."""
    arch = archs.for_hf(model.arch, path)
    cfg = arch.normalize(model.config)
    names = arch.name_map(cfg["num_hidden_layers"], cfg)
    dtype = dtype or (lossless_dtype(model) if quant else default_gguf_dtype(model))
    tensors = [(name, MemorySlice.tensor(arr, "F32")) for name, arr in arch.extra_tensors(model.config).items()]
    tied = cfg.get("tie_word_embeddings", False)
    for source_name, ref in experts.stack(model.tensors, arch, model.config, path).items():
        hf_name = arch.canonical(source_name)
        if hf_name is None or hf_name.endswith(SKIP_HF) or (tied and hf_name == "lm_head.weight"):
            continue
        if hf_name not in names:
            raise Unsupported(path, f"tensor {hf_name!r} has no GGUF name in the {arch.name} family")
        kind, gguf_name = names[hf_name]
        if len(ref.shape) <= 1:  # F32 in GGUF anyway: cast first, so a family transform (gemma's norm + 1) sees floats
            ref = cast(ref, "F32", hf_name)
        if kind in arch.gguf_transforms:
            ref = _mapped(ref, arch.gguf_transforms[kind], cfg)
        tensors.append((gguf_name, cast(ref, "F32" if len(ref.shape) <= 1 or kind in F32_KINDS else dtype,
                                               hf_name)))
    choices: list[dict] = []
    file_type = int(FILE_TYPES[dtype])
    if quant:
        tensors, choices = quantize(tensors, arch.gguf_name, _hparams(arch, cfg), quant, imatrix)
        file_type = quant_plan.FILE_TYPE[quant]
    kv: list[KV] = [
        (Keys.General.NAME, model.metadata.get("name") or arch.name, GGUFValueType.STRING, None),
        (Keys.General.FILE_TYPE, file_type, GGUFValueType.UINT32, None),
        (Keys.General.QUANTIZATION_VERSION, GGML_QUANT_VERSION, GGUFValueType.UINT32, None),
    ]
    kv += [(k, v, t, None) for k, v, t in arch.gguf_kv(model.config)]
    if "gguf_tokenizer" in model.metadata:  # GGUF -> GGUF: llama.cpp's own tokenizer keys, verbatim
        kv += model.metadata["gguf_tokenizer"]
    elif model.tokenizer:
        kv += tokenizer.hf_to_gguf(model.tokenizer, model.config)
    kv += sentence_transformers.to_gguf(model.metadata.get("sentence_transformers") or {}, arch.gguf_name)
    kv += imatrix_kv(imatrix) if quant and imatrix else []
    kv.append((CONFIG_KEY, json.dumps(model.config, sort_keys=True), GGUFValueType.STRING, None))
    kv += [(k, v, GGUFValueType.STRING, None) for k, v in provenance.items()]
    return arch.gguf_name, kv, tensors, choices


def imatrix_kv(imatrix: Imatrix) -> list[KV]:
    """The keys llama-quantize writes when given an importance matrix (tools/quantize/quantize.cpp)."""
    kv: list[KV] = [("quantize.imatrix.file", str(imatrix.path), GGUFValueType.STRING, None)]
    if imatrix.datasets:
        kv.append(("quantize.imatrix.dataset", imatrix.datasets[0], GGUFValueType.STRING, None))
    kv.append(("quantize.imatrix.entries_count", len(imatrix.values), GGUFValueType.INT32, None))
    if imatrix.chunk_count:
        kv.append(("quantize.imatrix.chunks_count", imatrix.chunk_count, GGUFValueType.INT32, None))
    return kv


def _agrees(expected: list[tuple[str, object, GGUFValueType]], values: dict) -> bool:
    same = {GGUFValueType.FLOAT32: lambda a, b: np.float32(a) == np.float32(b)}
    return all(k in values and same.get(t, lambda a, b: a == b)(v, values[k]) for k, v, t in expected)


def _stored_kv(arch: archs.Arch, stored: dict) -> list[tuple[str, object, GGUFValueType]] | None:
    """The keys the stored config would give; None when it lacks or mistypes a field (a damaged copy): then the
    GGUF's own keys, which the reader has checked, rebuild the config instead."""
    try:
        return arch.gguf_kv(stored)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError):
        return None


def _config(arch: archs.Arch, contents: GGUFContents) -> dict:
    """The stored source config when the GGUF's own keys still agree with it, else one rebuilt from the keys."""
    values = {k: v for k, (v, _, _) in contents.kv.items()}
    stored = stored_config(contents)
    expected = _stored_kv(arch, stored) if stored is not None and stored.get("model_type") == arch.name else None
    if expected is not None and _agrees(expected, values):
        return stored
    cfg = arch.hf_config(values)
    if "vocab_size" not in cfg and "token_embd.weight" in contents.tensors:  # llama.cpp's BertModel writes none
        cfg["vocab_size"] = contents.tensors["token_embd.weight"].shape[0]
    cfg["tie_word_embeddings"] = "output.weight" not in contents.tensors
    cfg.update(arch.hf_from_gguf(cfg, values, contents.tensors))
    cfg.update(tokenizer.special_ids(values))
    return cfg


def stored_config(contents: GGUFContents) -> dict | None:
    """The source config.json a GGUF of ours carries (CONFIG_KEY), checked as JSON; None if it has none."""
    if CONFIG_KEY not in contents.kv:
        return None
    text = contents.get(CONFIG_KEY)
    where = contents.files[0] if contents.files else None
    if not isinstance(text, str):
        raise BadInput(where, f"metadata {CONFIG_KEY!r} is not a string")
    cfg = jsonfile.loads(text, where, f"metadata {CONFIG_KEY!r}")
    if not isinstance(cfg, dict):
        raise BadInput(where, f"metadata {CONFIG_KEY!r} is not a JSON object")
    return cfg


def from_gguf(contents: GGUFContents, path: Path) -> Model:
    values = {k: v for k, (v, _, _) in contents.kv.items()}
    stored_type = (stored_config(contents) or {}).get("model_type")
    arch = archs.for_gguf(values.get(Keys.General.ARCHITECTURE, ""), stored_type, path, values)
    cfg = _config(arch, contents)
    norm = dims.normalized(arch, cfg, path)
    dims.check_tensors(arch, norm, {k: v for k, v in contents.tensors.items() if k not in arch.derived}, path)
    hf_names = {g: (kind, hf) for hf, (kind, g) in arch.name_map(norm["num_hidden_layers"], norm).items()}
    extra = set(arch.derived)
    tensors = {}
    for gguf_name, ref in contents.tensors.items():
        if gguf_name in extra:
            continue
        if gguf_name not in hf_names:
            raise Unsupported(path, f"tensor {gguf_name!r} has no Hugging Face name in the {arch.name} family")
        kind, hf = hf_names[gguf_name]
        if kind in arch.hf_transforms:
            ref = _mapped(ref, arch.hf_transforms[kind], norm)
        tensors[hf] = ref
    tensors = experts.split(tensors, arch, norm, path)
    # the HF dtype by default: the GGUF's own float precision, F16 for a quantized file
    file_type = FILE_TYPE_DTYPES.get(values.get(Keys.General.FILE_TYPE), "F16")
    return Model(arch=arch.name, config=cfg, tensors=tensors,
                 tokenizer=tokenizer.gguf_to_hf(values) if "tokenizer.ggml.model" in values else {},
                 metadata={"format": "gguf", "source_files": contents.files, "name": values.get(Keys.General.NAME),
                           "dtype": file_type,
                           "sentence_transformers": sentence_transformers.from_gguf(values, arch.gguf_name),
                           "gguf_tokenizer": [(k, v, t, sub) for k, (v, t, sub) in contents.kv.items()
                                              if k.startswith("tokenizer.")]})
