"""sentence-transformers folders through GGUF: modules.json, each module's config (1_Pooling/config.json) and
sentence_bert_config.json, which say how token states become one sentence embedding.

llama.cpp pools inside the model, so HF -> GGUF writes `{arch}.pooling_type` from the Pooling module's config, as
convert_hf_to_gguf.py's TextModel._try_set_pooling_type does, and keeps the files verbatim under FILES_KEY so that
GGUF -> HF gives them back; a GGUF without them (one llama.cpp made) gets modules.json and a pooling config rebuilt
from its pooling type. A Normalize module is left to llama.cpp's caller (llama-cpp-python's embed(normalize=True));
other modules (Dense ...) have no llama.cpp counterpart, so such a model is refused rather than pooled wrongly.
"""
from __future__ import annotations

import json
import re

from gguf import GGUFValueType, Keys, PoolingType

from modelport.convert import provenance
from modelport.formats import jsonfile
from modelport.formats.errors import BadInput, Unsupported

FILES_KEY = provenance.SENTENCE_TRANSFORMERS
MODES = {"mean": PoolingType.MEAN, "cls": PoolingType.CLS, "lasttoken": PoolingType.LAST}
MODE_FLAGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
              "lasttoken": "pooling_mode_lasttoken"}  # the Pooling config's boolean spelling, checked in this order
RUN_BY_LLAMA_CPP = ("Transformer", "Pooling", "Normalize")  # module class names (the last part of "type")
# the only names FILES_KEY may give (it is input): the folder's own files and module configs, never config.json,
# tokenizer or weight files that GGUF -> HF writes itself
NAMES = re.compile(r"(modules|sentence_bert_config|config_sentence_transformers)\.json|([\w.-]+/)+config\.json")


def modules(files: dict[str, bytes]) -> list[dict]:
    """modules.json's entries, [] for a plain HF folder."""
    if "modules.json" not in files:
        return []
    try:
        mods = jsonfile.loads(files["modules.json"], "modules.json")
        return [{**m, "class": m["type"].rsplit(".", 1)[-1]} for m in mods]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise BadInput("modules.json", f"malformed sentence-transformers modules: {e}") from None


def pooling_mode(files: dict[str, bytes]) -> str | None:
    """"mean", "cls" or "lasttoken" from the Pooling module's config; None without a Pooling module."""
    pooling = next((m for m in modules(files) if m["class"] == "Pooling"), None)
    if pooling is None:
        return None
    name = f"{pooling.get('path') or ''}/config.json".lstrip("/")
    if name not in files:
        raise BadInput(name, "the Pooling module's config is missing")
    cfg = jsonfile.loads(files[name], name)
    if not isinstance(cfg, dict):
        raise BadInput(name, "expected a JSON object")
    mode = next((m for m, flag in MODE_FLAGS.items() if cfg.get(flag)), cfg.get("pooling_mode"))
    if mode not in MODES:
        on = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v] or [mode]
        raise Unsupported(name, f"pooling {', '.join(map(str, on))} has no llama.cpp equivalent (mean, cls, lasttoken)")
    return mode


def normalizes(files: dict[str, bytes]) -> bool:
    return any(m["class"] == "Normalize" for m in modules(files))


def to_gguf(files: dict[str, bytes], gguf_arch: str) -> list[tuple[str, object, GGUFValueType, None]]:
    """`{arch}.pooling_type` and the files themselves, for a sentence-transformers folder; [] for any other."""
    if not files:
        return []
    extra = [m["class"] for m in modules(files) if m["class"] not in RUN_BY_LLAMA_CPP]
    if extra:
        raise Unsupported("modules.json", f"sentence-transformers module {extra[0]} has no llama.cpp equivalent")
    kv = [(FILES_KEY, json.dumps({n: b.decode("utf-8") for n, b in sorted(files.items())}, sort_keys=True),
           GGUFValueType.STRING, None)]
    mode = pooling_mode(files)
    if mode:
        kv.insert(0, (Keys.LLM.POOLING_TYPE.format(arch=gguf_arch), int(MODES[mode]), GGUFValueType.UINT32, None))
    return kv


def from_gguf(values: dict[str, object], gguf_arch: str) -> dict[str, bytes]:
    """The sentence-transformers files a GGUF carries, or ones rebuilt from its pooling type; {} for neither."""
    if FILES_KEY in values:
        return carried(values)
    mode = {int(v): m for m, v in MODES.items()}.get(values.get(Keys.LLM.POOLING_TYPE.format(arch=gguf_arch)))
    if mode is None:
        return {}
    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    pooling = {"word_embedding_dimension": values.get(Keys.LLM.EMBEDDING_LENGTH.format(arch=gguf_arch)),
               **{flag: m == mode for m, flag in MODE_FLAGS.items()}}
    return {"modules.json": _dump(mods), "1_Pooling/config.json": _dump(pooling)}


def carried(values: dict[str, object]) -> dict[str, bytes]:
    """The files kept under FILES_KEY (a GGUF key, an ONNX metadata entry), checked to be sentence-transformers files
    only (it is input); {} without the key."""
    if FILES_KEY not in values:
        return {}
    try:
        files = {n: t.encode("utf-8") for n, t in jsonfile.loads(values[FILES_KEY], None, FILES_KEY).items()}
    except (ValueError, AttributeError, TypeError) as e:
        raise BadInput(None, f"malformed {FILES_KEY}: {e}") from None
    odd = [n for n in files if not NAMES.fullmatch(n)]
    if odd:
        raise BadInput(None, f"{FILES_KEY} names {odd[0]!r}, not a sentence-transformers file")
    return files


def _dump(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")
