"""The Hugging Face config.json of an ONNX folder written by onnxruntime-genai's model builder, rebuilt: the builder
keeps no config.json, only genai_config.json (family, sizes, heads, vocab, context, special token ids), and the graph
says the rest (the MLP width by its weights, rms_norm_eps by the norms' epsilon, tied embeddings by a Gather over the
LM head's Transpose, rope_theta by the cos/sin caches); the sliding window is genai_config.json's or attention's.
What the rebuilt config cannot say is refused: families whose graphs hold more (granite's multipliers), attention
scaled otherwise than by 1/sqrt(head_dim) or soft-capped.

The rope is trusted only when the caches the builder computes from the recovered rope_theta equal the stored ones
bit for bit; scaled ropes (llama3, LongRoPE, YaRN) cannot be told from their caches and are refused, never guessed.
The caches are recomputed with torch, as the builder computes them: numpy's float32 cos and pow differ from torch's
in the last bit."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from modelport.formats import jsonfile
from modelport.formats.errors import BadInput, RuntimeMissing, Unsupported
from modelport.formats.model import TensorRef

from modelport.convert import archs
from modelport.convert.dtypes import cast

FILE = "genai_config.json"
# genai_config.json "model" -> config.json fields it says outright (decoder section, then the model section)
DECODER_FIELDS = {"hidden_size": "hidden_size", "num_attention_heads": "num_attention_heads",
                  "num_key_value_heads": "num_key_value_heads", "head_size": "head_dim",
                  "num_hidden_layers": "num_hidden_layers"}
MODEL_FIELDS = {"vocab_size": "vocab_size", "context_length": "max_position_embeddings", "bos_token_id": "bos_token_id",
                "eos_token_id": "eos_token_id", "pad_token_id": "pad_token_id"}
# op -> input slots of its cos and sin caches (GroupQueryAttention rotates when do_rotary is set)
ROPE_CACHES = {"GroupQueryAttention": (7, 8), "RotaryEmbedding": (2, 3)}
ATTENTION = {"GroupQueryAttention", "MultiHeadAttention"}
NORMS = {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "LayerNormalization",
         "SkipLayerNormalization"}
DEFAULT_EPSILON = 1e-5  # the contrib norm ops' default epsilon
MAX_DIGITS = 9  # a float32 theta round-trips through 9 significant digits
PREFIX = 64  # cache rows compared before the whole cache (64 x head_dim values: whole vectors for torch's kernels)
CACHE_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # the caches' types -> torch's


def load(folder: Path) -> dict | None:
    """genai_config.json's "model" section, or None without the file."""
    path = folder / FILE
    if not os.path.lexists(path):
        return None
    data = jsonfile.load(path, folder)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("decoder"), dict):
        raise BadInput(path, "no \"model\" section with a \"decoder\" in it")
    return model


def family(genai: dict, path: Path) -> archs.Arch:
    """The family the builder named: its type is the HF architecture class up to "For", lowercased."""
    kind = genai.get("type")
    found = [a for a in archs.registry().values() if a.hf_class.split("For")[0].lower() == kind]
    if not found or not (found[0].onnx.read_back and found[0].onnx.genai_config):
        known = sorted(a.name for a in archs.registry().values() if a.onnx.read_back and a.onnx.genai_config)
        raise Unsupported(path, f"onnxruntime-genai model type {kind!r}: modelport rebuilds the config.json of "
                                f"{', '.join(known)} builder exports only")
    return found[0]


def partial(genai: dict, arch: archs.Arch, path: Path) -> dict:
    """The config.json fields genai_config.json says."""
    decoder = genai["decoder"]
    missing = [k for k in DECODER_FIELDS if k not in decoder] + [k for k in ("vocab_size", "context_length")
                                                                 if k not in genai]
    if missing:
        raise BadInput(path / FILE, f"genai_config.json has no {missing[0]!r}")
    cfg = {"architectures": [arch.hf_class], "model_type": arch.name, **arch.hf_defaults}
    cfg |= {hf: decoder[k] for k, hf in DECODER_FIELDS.items()}
    cfg |= {hf: genai[k] for k, hf in MODEL_FIELDS.items() if genai.get(k) is not None}
    return cfg


def epsilon(nodes: list, path: Path) -> float:
    """The one epsilon of the graph's norms (attention's own per-head ones too), as the decimal it was written as
    (the attribute is float32)."""
    found = {next((a.f for a in n.attribute if a.name == "epsilon"), DEFAULT_EPSILON) for n in nodes
             if n.op_type in NORMS}
    found |= {a.f for n in nodes if n.op_type in ATTENTION for a in n.attribute if a.name == "qk_norm_epsilon"}
    if len(found) != 1:
        raise Unsupported(path, f"ONNX graph: its norms have {len(found)} epsilon values; expected one")
    return float(str(np.float32(found.pop())))


def sliding_window(genai: dict, nodes: list, path: Path) -> int | None:
    """The attention window: genai_config.json's decoder.sliding_window.window_size (the source config's, which
    the builder copies there even where its graph leaves the window out: transformers 5's mistral has no
    layer_types for it to mark), else attention's local_window_size (-1 or absent: none), one for every layer."""
    said = genai["decoder"].get("sliding_window")
    if isinstance(said, dict) and isinstance(said.get("window_size"), int) and said["window_size"] > 0:
        return said["window_size"]
    found = {next((a.i for a in n.attribute if a.name == "local_window_size"), -1) for n in nodes
             if n.op_type == "GroupQueryAttention"}
    if len(found) > 1:
        raise Unsupported(path, "ONNX graph: layers with different attention windows are not read back")
    window = found.pop() if found else -1
    return None if window < 0 else window


def check_attention(nodes: list, head_dim: int, path: Path) -> None:
    """Attention as the rebuilt config computes it: scores scaled by 1/sqrt(head_dim), no soft-cap; any other scale
    or cap would be a config field the rebuild does not say, so it is refused rather than dropped."""
    for n in nodes:
        if n.op_type not in ATTENTION:
            continue
        attrs = {a.name: a.f for a in n.attribute if a.type == a.FLOAT}
        scale, cap = attrs.get("scale", 0.0) or head_dim ** -0.5, attrs.get("softcap", 0.0)
        if np.float32(scale) != np.float32(head_dim ** -0.5) or cap:
            raise Unsupported(path, f"ONNX graph: attention scale {scale:g} or soft-cap {cap:g} is not what a config "
                                    f"of head_dim {head_dim} says: config.json could not be rebuilt")


def rope_caches(nodes: list, inits: dict[str, TensorRef], path: Path) -> tuple[TensorRef, TensorRef]:
    """The one pair of cos/sin cache initializers the rotations read."""
    pairs = set()
    for n in nodes:
        slots = ROPE_CACHES.get(n.op_type)
        if slots and len(n.input) > slots[1] and n.input[slots[0]] and n.input[slots[1]]:
            pairs.add((n.input[slots[0]], n.input[slots[1]]))
    if len(pairs) != 1 or not all(x in inits for x in next(iter(pairs))):
        raise Unsupported(path, "the rotary cos/sin caches are not one pair of initializers (picked in the graph, as "
                                "LongRoPE's short and long ones are?): the rope could not be recovered")
    cos, sin = (inits[x] for x in pairs.pop())
    return cos, sin


def _caches(theta: float, dim: int, length: int, dtype: str) -> tuple[bytes, bytes]:
    """The bytes of the cos and sin caches [length, dim / 2] as the builder computes them
    (make_rotary_embedding_caches_from_scratch: the halves of cat(freqs, freqs) in float32, then cast)."""
    import torch

    inv_freq = 1.0 / (1 * (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)))
    t = torch.arange(length, dtype=torch.int64).type_as(inv_freq)
    emb = torch.cat((torch.outer(t, inv_freq),) * 2, dim=-1)

    def stored(x):
        x = x.to(getattr(torch, CACHE_TYPES[dtype]))[:, :dim // 2].contiguous()
        return x.view(torch.int16 if x.element_size() == 2 else torch.int32).numpy().tobytes()

    return stored(emb.cos() * 1), stored(emb.sin() * 1)


def rope_theta(cos_ref: TensorRef, sin_ref: TensorRef, head_dim: int, path: Path) -> float:
    """rope_theta from the caches: the angles at position 1 are the inverse frequencies theta^(-2i/dim); the
    shortest decimal whose recomputed caches equal the stored ones bit for bit (its first PREFIX rows tried first,
    so that a wrong candidate costs no whole cache), else Unsupported."""
    try:
        import torch  # noqa: F401  (the builder's arithmetic, to compare bit for bit)
    except ImportError:
        raise RuntimeMissing(path, "reading onnxruntime-genai's rope caches back needs torch") from None
    if cos_ref.dtype not in CACHE_TYPES or sin_ref.dtype != cos_ref.dtype:
        raise Unsupported(path, f"rotary caches of type {cos_ref.dtype}: the rope could not be recovered")
    length, half = cos_ref.shape if len(cos_ref.shape) == 2 else (0, 0)
    if cos_ref.shape != sin_ref.shape or length < 2 or 2 * half != head_dim:
        raise Unsupported(path, f"rotary caches {list(cos_ref.shape)} do not rotate whole heads of {head_dim}: "
                                "partial rotary embeddings are not read back, the rope could not be recovered")
    stored = cos_ref.read().tobytes(), sin_ref.read().tobytes()
    row = len(stored[0]) // length
    cos, sin = (cast(r, "F32").read()[1].astype(np.float64) for r in (cos_ref, sin_ref))
    angles = np.arctan2(sin, cos)
    i = np.arange(1, half)
    fitted = float(np.exp(np.mean(-np.log(angles[1:]) * head_dim / (2 * i)))) if half > 1 and (angles > 0).all() \
        else 0.0
    rows = min(PREFIX, length)
    for digits in range(1, MAX_DIGITS + 1):
        theta = float(f"{fitted:.{digits}g}") if fitted > 1 else 0.0
        if theta <= 1:
            break
        if _caches(theta, head_dim, rows, cos_ref.dtype) == tuple(b[:rows * row] for b in stored) and \
                _caches(theta, head_dim, length, cos_ref.dtype) == stored:
            return theta
    raise Unsupported(path, "the rotary cos/sin caches are not an unscaled rope of any rope_theta (llama3, "
                            "LongRoPE or YaRN scaling?): the rope could not be recovered")


def rebuilt(genai: dict, cfg: dict, intermediate_size: int, tied: bool, nodes: list, inits: dict[str, TensorRef],
            path: Path) -> dict:
    """The whole config.json: genai_config.json's fields and what the graph says. A family whose one window applies
    to every layer is told "none" outright: transformers' mistral defaults to a 4096-token window."""
    check_attention(nodes, cfg["head_dim"], path)
    cos, sin = rope_caches(nodes, inits, path)
    out = {**cfg, "intermediate_size": intermediate_size, "rms_norm_eps": epsilon(nodes, path),
           "tie_word_embeddings": tied,
           "rope_theta": rope_theta(cos, sin, cfg["head_dim"], path)}
    window = sliding_window(genai, nodes, path)
    if window is not None or archs.for_hf(cfg["model_type"]).onnx.sliding_window_everywhere:
        out["sliding_window"] = window
    return out
