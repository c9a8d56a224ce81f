"""The Hugging Face config.json of an ONNX folder written by onnxruntime-genai's model builder, rebuilt: the builder
keeps no config.json, only genai_config.json (family, sizes, heads, vocab, context, special token ids), and the graph
says the rest (the MLP width by its weights, rms_norm_eps by the norms' epsilon, tied embeddings by a Gather over the
LM head's Transpose, rope_theta by the cos/sin caches); the sliding window is genai_config.json's or attention's,
and which layers are local each attention's window. The scalars the builder keeps in attention attributes and graph
constants (attention scale and soft-cap, the logits' soft-cap or multiplier, the embedding's and residual branches'
multipliers: gemma2's and granite's config fields) are read through the family's Decoder row, the config key it
reads set to the shortest decimal that gives the graph's float32; a scalar no key of the family gives (a llama graph
scaled or soft-capped) is refused, never dropped. A pad_token_id the builder may have invented is left out.

The rope is trusted only when the caches the builder computes from the recovered rope_theta (and llama3 scaling,
Llama 3.1's and 3.2's, its parameters read off the caches and a short table) equal the stored ones bit for bit;
LongRoPE's two cache pairs (Phi-3 128k's, picked in the graph by the sequence length) give its short and long
factors column by column, each the shortest decimal whose column the builder computes bit for bit; other scalings
(YaRN, linear) cannot be told from their caches and are refused, never guessed.
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
from modelport.convert.onnx import rope as onnx_rope

FILE = "genai_config.json"
# genai_config.json "model" -> config.json fields it says outright (decoder section, then the model section)
DECODER_FIELDS = {"hidden_size": "hidden_size", "num_attention_heads": "num_attention_heads",
                  "num_key_value_heads": "num_key_value_heads", "head_size": "head_dim",
                  "num_hidden_layers": "num_hidden_layers"}
MODEL_FIELDS = {"vocab_size": "vocab_size", "context_length": "max_position_embeddings", "bos_token_id": "bos_token_id",
                "eos_token_id": "eos_token_id"}
# op -> input slots of its cos and sin caches (GroupQueryAttention rotates when do_rotary is set)
ROPE_CACHES = {"GroupQueryAttention": (7, 8), "RotaryEmbedding": (2, 3)}
ATTENTION = {"GroupQueryAttention", "MultiHeadAttention"}
NORMS = {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "LayerNormalization",
         "SkipLayerNormalization"}
EMBEDDINGS = {"Gather", "GatherBlockQuantized"}
PROJECTIONS = {"MatMul", "MatMulNBits", "Gemm"}


def _integral(value: float) -> float | int:
    """An integral value as an int (config.json's query_pre_attn_scalar is one)."""
    return int(value) if float(value).is_integer() else value


# the builder's graph scalars, by the Decoder field computing them -> config.json keys that say them (key, the key's
# value from the graph's, its type); a family's row reads at most one of each (gemma2's query_pre_attn_scalar,
# granite's attention_multiplier)
SCALAR_KEYS = {"attention_scale": (("query_pre_attn_scalar", lambda s: s ** -2, _integral),
                                   ("attention_multiplier", float, float)),
               "attention_softcap": (("attn_logit_softcapping", float, float),),
               "logit_softcap": (("final_logit_softcapping", float, float),),
               "logit_divisor": (("logits_scaling", lambda m: 1 / m, float),),
               "embedding_scale": (("embedding_multiplier", float, float),),
               "residual_scale": (("residual_multiplier", float, float),)}
# how the graph holds a Decoder field's value (the builder multiplies logits by 1 / the divisor; its GemmaModel
# rounds gemma's sqrt(hidden_size) embedding scale to two decimals)
GRAPH_FORMS = {"attention_scale": (float,), "attention_softcap": (float,), "logit_softcap": (float,),
               "logit_divisor": (lambda d: 1 / d,), "embedding_scale": (float, lambda s: np.round(s, 2)),
               "residual_scale": (float,)}
NEUTRAL = {"attention_softcap": 0.0, "logit_softcap": 0.0, "logit_divisor": 1.0, "embedding_scale": 1.0,
           "residual_scale": 1.0}  # a step computing nothing, as if left out
CONFIG_NEUTRAL = {"logit_divisor": 1.0, "embedding_scale": 1.0, "residual_scale": 1.0}  # soft-caps: None
PROBES = (7.0, 11.0)  # two values of a key: a row computing the same from both does not read it
MISSING = object()
DEFAULT_EPSILON = 1e-5  # the contrib norm ops' default epsilon
MAX_DIGITS = 9  # a float32 theta round-trips through 9 significant digits
LONGROPE_THETA = 10000.0  # Phi3Config's rope_theta, for LongRoPE's caches (which cannot tell it: longrope())
PREFIX = 64  # cache rows compared before the whole cache (64 x head_dim values: whole vectors for torch's kernels)
# llama3 rope scaling's (low_freq_factor, high_freq_factor, original_max_position_embeddings) tried: Llama 3.1's and
# 3.2's (1, 4, 8192) first, then neighbours; each is kept only when it gives the stored caches bit for bit
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
LLAMA3_FACTORS = [8.0, 32.0, 16.0, 4.0, 2.0, 64.0]
LLAMA3 = [(low, high, context) for context in (8192, 4096, 16384, 32768) for low in (1.0, 2.0, 0.5)
          for high in (4.0, 8.0, 2.0) if high > low]
CACHE_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # the caches' types -> torch's
# (rtol, atol) within which the angles a cache type holds tell a candidate rope worth recomputing exactly
NEAR = {"F32": (1e-4, 0.0), "F16": (5e-2, 1e-4), "BF16": (5e-2, 1e-4)}


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
    return cfg | pad(genai)


def pad(genai: dict) -> dict:
    """pad_token_id unless it may be the builder's invention: it falls back to the first eos_token_id where neither
    config.json nor the tokenizer names a pad token (resolve_special_token_ids), so that value is left out."""
    eos = genai.get("eos_token_id")
    first = eos[0] if isinstance(eos, list) and eos else eos
    said = genai.get("pad_token_id")
    return {} if said is None or said == first else {"pad_token_id": said}


def epsilon(nodes: list, path: Path) -> float:
    """The one epsilon of the graph's norms (attention's own per-head ones too), as the decimal it was written as
    (the attribute is float32)."""
    found = {next((a.f for a in n.attribute if a.name == "epsilon"), DEFAULT_EPSILON) for n in nodes
             if n.op_type in NORMS}
    found |= {a.f for n in nodes if n.op_type in ATTENTION for a in n.attribute if a.name == "qk_norm_epsilon"}
    if len(found) != 1:
        raise Unsupported(path, f"ONNX graph: its norms have {len(found)} epsilon values; expected one")
    return float(str(np.float32(found.pop())))


def sliding_window(genai: dict, nodes: list, local_layers: bool, path: Path) -> tuple[int | None, list | None]:
    """The attention window and, for a family with local and global layers (`local_layers`), which layers are
    local: genai_config.json's decoder.sliding_window.window_size (the source config's, which the builder copies
    there even where its graph leaves the window out: transformers 5's mistral has no layer_types for it to mark),
    else attention's local_window_size (-1 or absent: none); layer_types from each layer's local_window_size."""
    windows = [next((a.i for a in n.attribute if a.name == "local_window_size"), -1) for n in nodes
               if n.op_type == "GroupQueryAttention"]
    local = {w for w in windows if w > 0}
    if len(local) > 1 or (len(set(windows)) > 1 and not local_layers):
        raise Unsupported(path, "ONNX graph: layers with different attention windows are not read back")
    said = genai["decoder"].get("sliding_window")
    window = said["window_size"] if isinstance(said, dict) and isinstance(said.get("window_size"), int) and \
        said["window_size"] > 0 else next(iter(local), None)
    kinds = [("full_attention", "sliding_attention")[w > 0] for w in windows] if local_layers and windows else None
    return window, kinds


def _constants(nodes: list, inits: dict[str, TensorRef]) -> dict[str, float]:
    """The graph's one-value float constants (the builder's Constant nodes, one-value initializers)."""
    import onnx

    values = {name: float(cast(ref, "F32").read().reshape(-1)[0]) for name, ref in inits.items()
              if ref.n_elements == 1 and ref.dtype in CACHE_TYPES}
    for n in nodes:
        tensor = next((a.t for a in n.attribute if a.name == "value"), None) if n.op_type == "Constant" else None
        array = None if tensor is None else onnx.numpy_helper.to_array(tensor)
        if array is not None and array.size == 1 and array.dtype.kind == "f":
            values[n.output[0]] = float(array.reshape(-1)[0])
    return values


def _scaled(node, op: str, constants: dict[str, float]) -> tuple[str, float] | None:
    """(the other input, the constant) of an `op` node by a one-value constant, else None."""
    if node is None or node.op_type != op or len(node.input) != 2:
        return None
    x, c = node.input if node.input[1] in constants else node.input[::-1]
    return (x, constants[c]) if c in constants and x not in constants else None


def _logits(node, producer: dict, constants: dict[str, float], path: Path) -> dict[str, float | None]:
    """The logits' soft-cap (Mul by c of Tanh of a Div by c) or multiplier (one Mul by a constant: 1 / the
    divisor), from the node making the logits output."""
    mul = _scaled(node, "Mul", constants)
    if mul is None:
        return {"logit_softcap": None, "logit_divisor": None}
    tanh = producer.get(mul[0])
    if tanh is None or tanh.op_type != "Tanh":
        return {"logit_softcap": None, "logit_divisor": mul[1]}
    div = _scaled(producer.get(tanh.input[0]), "Div", constants)
    if div is None or div[1] != mul[1]:
        raise Unsupported(path, "ONNX graph: the logits' Tanh is not a soft-cap: config.json could not be rebuilt")
    return {"logit_softcap": mul[1], "logit_divisor": None}


def graph_scalars(genai: dict, head_dim: int, nodes: list, inits: dict[str, TensorRef], path: Path
                  ) -> dict[str, float | None]:
    """The builder graph's scalars, named as the Decoder fields that compute them (None: the step is not in the
    graph): attention's scale and soft-cap (its attributes), the logits' soft-cap or multiplier, the embedding
    lookup's Mul by a constant, the residual branches' (a Mul by a constant of a projection's product, the logits'
    aside). Each must be one value over the layers."""
    constants, producer = _constants(nodes, inits), {o: n for n in nodes for o in n.output}
    attention = [{a.name: a.f for a in n.attribute if a.type == a.FLOAT} for n in nodes if n.op_type in ATTENTION]
    found = {"attention_scale": {a.get("scale", 0.0) or head_dim ** -0.5 for a in attention},
             "attention_softcap": {a.get("softcap", 0.0) or None for a in attention}}
    last = producer.get(genai["decoder"].get("outputs", {}).get("logits", "logits"))
    found |= {k: {v} for k, v in _logits(last, producer, constants, path).items()}
    ids = genai["decoder"].get("inputs", {}).get("input_ids", "input_ids")
    tables = {o for n in nodes if n.op_type in EMBEDDINGS and ids in n.input[1:] for o in n.output}
    muls = [(n, s) for n in nodes if (s := _scaled(n, "Mul", constants))]
    found["embedding_scale"] = {c for _, (x, c) in muls if x in tables} or {None}
    found["residual_scale"] = {c for n, (x, c) in muls if n is not last and x in producer and
                               producer[x].op_type in PROJECTIONS} or {None}
    for field, values in found.items():
        if len(values) != 1:
            raise Unsupported(path, f"ONNX graph: {len(values)} values of {field}; expected one: config.json could "
                                    "not be rebuilt")
    return {field: values.pop() for field, values in found.items()}


def _computes(decoder, field: str, cfg: dict, value: float | None) -> bool:
    """Whether the family's Decoder row computes from `cfg` the graph's `value` of `field` as the builder stores
    it (float32, in one of the field's GRAPH_FORMS; a neutral value is a step left out)."""
    try:
        said = getattr(decoder, field)(cfg)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return False
    if said is None or said == NEUTRAL.get(field):
        return value is None or value == NEUTRAL.get(field)
    return value is not None and any(np.float32(form(said)) == np.float32(value) for form in GRAPH_FORMS[field])


def _reads(decoder, field: str, cfg: dict, key: str, kind) -> bool:
    """Whether the family's Decoder row for `field` changes with config key `key`."""
    compute = getattr(decoder, field)
    try:
        return compute(cfg | {key: kind(PROBES[0])}) != compute(cfg | {key: kind(PROBES[1])})
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return False


def scalars(decoder, cfg: dict, found: dict[str, float | None], path: Path) -> dict:
    """The config fields that make the family's Decoder row compute the graph's scalars: a key the row reads (of
    SCALAR_KEYS) set to the shortest decimal (or the neutral value) that gives the graph's float32; a scalar the row
    computes without a key must come out of the config as rebuilt. Anything else is a field the rebuild cannot say:
    refused, never dropped."""
    out = {}
    for field, value in found.items():
        read = next((k for k in SCALAR_KEYS.get(field, ()) if _reads(decoder, field, cfg, k[0], k[2])), None)
        hit = MISSING
        if read is None and _computes(decoder, field, cfg, value):
            continue
        if read is not None:
            key, inverse, kind = read
            tries = [CONFIG_NEUTRAL.get(field)] if value is None else [kind(d) for d in _decimals(inverse(value))]
            hit = next((v for v in tries if _computes(decoder, field, cfg | {key: v}, value)), MISSING)
        if hit is MISSING:
            raise Unsupported(path, f"ONNX graph: {field} {value} is not what a config of the family computes: "
                                    "config.json could not be rebuilt")
        out[key] = hit
    return out


def rope_caches(nodes: list, inits: dict[str, TensorRef], path: Path) -> tuple[TensorRef, ...]:
    """The cos/sin caches the rotations read: one pair of initializers, or LongRoPE's two pairs the graph picks
    between (`_picked_caches`) and the length past which it takes the long pair."""
    pairs = set()
    for n in nodes:
        slots = ROPE_CACHES.get(n.op_type)
        if slots and len(n.input) > slots[1] and n.input[slots[0]] and n.input[slots[1]]:
            pairs.add((n.input[slots[0]], n.input[slots[1]]))
    pair = pairs.pop() if len(pairs) == 1 else None
    if pair and all(x in inits for x in pair):
        return tuple(inits[x] for x in pair)
    picked = _picked_caches(nodes, pair) if pair else None
    if picked is None:
        raise Unsupported(path, "the rotary cos/sin caches are not one pair of initializers nor two picked by the "
                                "sequence length: the rope could not be recovered")
    return picked


def _picked_caches(nodes: list, pair: tuple[str, str]) -> tuple | None:
    """LongRoPE's caches as the builder's Phi3MiniLongRoPEModel leaves them: an If on Greater(sequence length,
    original context) whose branches are Constant cos/sin pairs (then: long, else: short); (short cos, short sin,
    long cos, long sin, original context), float32 arrays, else None."""
    import onnx

    node = next((n for n in nodes if n.op_type == "If" and tuple(n.output) == pair), None)
    test = next((n for n in nodes if node is not None and n.op_type == "Greater" and node.input[0] in n.output), None)
    limit = next((m for m in nodes if test is not None and m.op_type == "Constant" and test.input[1] in m.output),
                 None)
    if limit is None:
        return None
    branches = []
    for graph in (next((a.g for a in node.attribute if a.name == name), None) for name in ("else_branch",
                                                                                          "then_branch")):
        values = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"} if graph else {}
        branches += [values.get(o.name) for o in graph.output] if graph else [None]
    original = onnx.numpy_helper.to_array(limit.attribute[0].t)
    if len(branches) != 4 or any(b is None or b.dtype != np.float32 or b.ndim != 2 for b in branches) or \
            original.size != 1:
        return None
    return (*branches, int(original.reshape(-1)[0]))


def _su_mscale(context: int, original: int):
    """The caches' magnitude, as the builder's make_mscale_su computes it (transformers' LongRoPE attention_factor
    default); a float64 numpy scalar, as the builder multiplies by."""
    scale = context / original
    return 1.0 if scale <= 1.0 else np.sqrt(1 + np.log(scale) / np.log(original))


def _longrope_column(factor: float, power, position: np.ndarray, mscale) -> tuple[bytes, bytes]:
    """One frequency's cos and sin columns as the builder computes them: 1 / (factor * theta^(2i/d)) in float32,
    times each position, cos and sin times the magnitude."""
    import torch

    inv = 1.0 / (torch.tensor([factor], dtype=torch.float32) * power)
    x = torch.from_numpy(position) * inv
    return (x.cos() * mscale).numpy().tobytes(), (x.sin() * mscale).numpy().tobytes()


def _factors(cos: np.ndarray, sin: np.ndarray, dim: int, mscale, path: Path) -> list[float]:
    """Each frequency's factor: the shortest decimal whose column the builder computes equals the stored one bit for
    bit (its first estimate off the angle at position 1), else Unsupported."""
    import torch

    powers = LONGROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    position = np.arange(len(cos), dtype=np.int64).astype(np.float32)
    found = []
    for i, power in enumerate(powers.reshape(-1, 1)):
        stored = np.ascontiguousarray(cos[:, i]).tobytes(), np.ascontiguousarray(sin[:, i]).tobytes()
        estimate = 1.0 / (np.arctan2(float(sin[1, i]), float(cos[1, i])) * float(power[0]))
        hit = next((f for f in _decimals(estimate) if _longrope_column(f, power, position, mscale) == stored), None)
        if hit is None:
            raise Unsupported(path, f"LongRoPE caches: no factor of frequency {i} gives its cache column (another "
                                    "theta or attention factor?): the rope could not be recovered")
        found.append(hit)
    return found


def longrope(caches: tuple, head_dim: int, context: int, path: Path) -> dict:
    """LongRoPE's config fields from its two cache pairs: the short one's length is
    original_max_position_embeddings, each factor is read column by column (`_factors`) with the builder's default
    magnitude; Phi3Config's rope_theta is taken, since the caches hold only factor x theta^(2i/d): the fields rebuilt
    compute those caches bit for bit, in the builder's arithmetic and in transformers' (the same)."""
    try:
        import torch  # noqa: F401  (the builder's arithmetic, to compare bit for bit)
    except ImportError:
        raise RuntimeMissing(path, "reading onnxruntime-genai's rope caches back needs torch") from None
    short_cos, short_sin, long_cos, long_sin, original = caches
    if short_cos.shape != (original, head_dim // 2) or long_cos.shape != (context, head_dim // 2) or \
            short_sin.shape != short_cos.shape or long_sin.shape != long_cos.shape or original < 2:
        raise Unsupported(path, f"LongRoPE caches {list(short_cos.shape)} and {list(long_cos.shape)} are not "
                                f"{original} and {context} positions of whole heads of {head_dim}: the rope could "
                                "not be recovered")
    mscale = _su_mscale(context, original)
    short = _factors(short_cos, short_sin, head_dim, mscale, path)
    long = _factors(long_cos, long_sin, head_dim, mscale, path)
    return {"rope_theta": LONGROPE_THETA, "original_max_position_embeddings": original,
            "rope_scaling": {"rope_type": "longrope", "short_factor": short, "long_factor": long}}


def _inv_freq(theta: float, dim: int, llama3: tuple[float, float, float, int] | None = None):
    """The inverse frequencies as the builder computes them (make_rotary_embedding_caches_from_scratch), llama3's
    rescaled one by one as its make_inv_freq_rescaled_with_freq_factors does: (factor, low_freq_factor,
    high_freq_factor, original_max_position_embeddings)."""
    import torch

    inv_freq = 1.0 / (1 * (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)))
    if llama3 is None:
        return inv_freq
    factor, low, high, old_context_len = llama3
    low_wavelen, high_wavelen = old_context_len / low, old_context_len / high
    new_freqs = []
    for freq in inv_freq:
        wavelen = 2 * torch.pi / freq
        if wavelen < high_wavelen:
            new_freqs.append(freq)
        elif wavelen > low_wavelen:
            new_freqs.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low) / (high - low)
            new_freqs.append((1 - smooth) * freq / factor + smooth * freq)
    return torch.tensor(new_freqs, dtype=inv_freq.dtype)


def _caches(inv_freq, length: int, dtype: str) -> tuple[bytes, bytes]:
    """The bytes of the cos and sin caches [length, dim / 2] as the builder computes them: the halves of
    cat(freqs, freqs) in float32, then cast."""
    import torch

    t = torch.arange(length, dtype=torch.int64).type_as(inv_freq)
    emb = torch.cat((torch.outer(t, inv_freq),) * 2, dim=-1)

    def stored(x):
        x = x.to(getattr(torch, CACHE_TYPES[dtype]))[:, :len(inv_freq)].contiguous()
        return x.view(torch.int16 if x.element_size() == 2 else torch.int32).numpy().tobytes()

    return stored(emb.cos() * 1), stored(emb.sin() * 1)


def _decimals(value: float, digits: int = MAX_DIGITS) -> list[float]:
    """`value` rounded to 1, 2 ... `digits` significant digits, the shortest of those one float32 holds (torch
    computes with the float32 of a Python number) kept."""
    if not np.isfinite(value) or value <= 0:
        return []
    found = {}
    for d in range(1, digits + 1):
        found.setdefault(np.float32(float(f"{value:.{d}g}")), float(f"{value:.{d}g}"))
    return list(found.values())


def _scaling(llama3: tuple[float, float, float, int] | None) -> dict | None:
    """config.json's rope_scaling for llama3 parameters (factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings); None for an unscaled rope."""
    return None if llama3 is None else {"rope_type": "llama3", **dict(zip(LLAMA3_KEYS, llama3))}


def _near(theta: float, dim: int, llama3: tuple[float, float, float, int] | None, angles: np.ndarray,
          tolerance: tuple[float, float]) -> bool:
    """Whether the candidate's inverse frequencies (transformers' arithmetic, vectorised) are within (rtol, atol) of
    the angles the caches hold: only those are recomputed as the builder does, one frequency at a time."""
    inv = onnx_rope.of({"rope_theta": theta, "rope_scaling": _scaling(llama3)}, dim).inv_freq
    return bool(np.allclose(inv.astype(np.float64), angles, rtol=tolerance[0], atol=tolerance[1]))


def _candidates(angles: np.ndarray, dim: int):
    """(rope_theta, llama3 parameters or None) to try: the unscaled rope of the theta the angles fit, then llama3's
    scaling with that theta read off the highest frequency (which it leaves alone), its factor off the lowest (which
    it divides) or from LLAMA3_FACTORS, and the other three from LLAMA3 (the published ones and their
    neighbours)."""
    half = len(angles)
    if half < 2 or not (angles > 0).all():
        return
    with np.errstate(all="ignore"):
        fitted = float(np.exp(np.mean(-np.log(angles[1:]) * dim / (2 * np.arange(1, half)))))
    for theta in _decimals(fitted):
        yield theta, None
    for theta in _decimals(float(angles[1]) ** (-dim / 2)):
        estimate = _decimals(float(theta ** (-2 * (half - 1) / dim) / angles[-1]), 4)
        for factor in dict.fromkeys(estimate + LLAMA3_FACTORS):  # half caches hold the lowest angle coarsely
            for low, high, context in LLAMA3:
                yield theta, (factor, low, high, context)


def rope(cos_ref: TensorRef, sin_ref: TensorRef, head_dim: int, path: Path) -> dict:
    """The config's rope fields from the caches: the angles at position 1 are the inverse frequencies; the first
    candidate (shortest decimals first) whose recomputed caches equal the stored ones bit for bit (its first PREFIX
    rows tried first, so that a wrong candidate costs no whole cache), else Unsupported."""
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
    rows = min(PREFIX, length)
    prefix = tuple(b[:rows * len(b) // length] for b in stored)
    cos, sin = (cast(r, "F32").read()[1].astype(np.float64) for r in (cos_ref, sin_ref))
    angles = np.arctan2(sin, cos)
    for theta, llama3 in _candidates(angles, head_dim):
        if not _near(theta, head_dim, llama3, angles, NEAR[cos_ref.dtype]):
            continue
        inv_freq = _inv_freq(theta, head_dim, llama3)
        if _caches(inv_freq, rows, cos_ref.dtype) == prefix and _caches(inv_freq, length, cos_ref.dtype) == stored:
            return {"rope_theta": theta} | ({"rope_scaling": _scaling(llama3)} if llama3 else {})
    raise Unsupported(path, "the rotary cos/sin caches are not those of an unscaled or llama3-scaled rope (LongRoPE "
                            "or YaRN scaling?): the rope could not be recovered")


def rebuilt(genai: dict, cfg: dict, intermediate_size: int, tied: bool, nodes: list, inits: dict[str, TensorRef],
            path: Path) -> dict:
    """The whole config.json: genai_config.json's fields and what the graph says. A family whose one window applies
    to every layer is told "none" outright: transformers' mistral defaults to a 4096-token window."""
    support = archs.for_hf(cfg["model_type"]).onnx
    caches = rope_caches(nodes, inits, path)
    rotary = rope(*caches, cfg["head_dim"], path) if len(caches) == 2 else \
        longrope(caches, cfg["head_dim"], cfg["max_position_embeddings"], path)
    out = {**cfg, "intermediate_size": intermediate_size, "rms_norm_eps": epsilon(nodes, path),
           "tie_word_embeddings": tied, **rotary}
    out |= scalars(support.decoder, out, graph_scalars(genai, cfg["head_dim"], nodes, inits, path), path)
    local_layers = support.decoder.layer_types(out) is not None or support.window_switch is not None
    window, kinds = sliding_window(genai, nodes, local_layers, path)
    if window is not None or support.sliding_window_everywhere:
        out["sliding_window"] = window
    if kinds and support.window_switch:
        out[support.window_switch] = "sliding_attention" in kinds
    return out | ({"layer_types": kinds} if kinds else {})
