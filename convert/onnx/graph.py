"""The decoder graph of the llama-like families from the pivot, with onnx.helper. What a family computes differently
(scales, soft-capping, norm offset, activation, extra norms) is its ONNX section's `Decoder` row
(convert/archs/base.py), read here as data.

The graph is small (a few hundred nodes); only the weights are big, and they stay lazy TensorRefs that the writer
streams into the external-data file. Every float initializer keeps its HF name, layout and (cast) dtype, so
HF -> ONNX -> HF is bit-identical: linear weights stay [out, in] and are used by Gemm with transB=1 (GPT-2's
Conv1D weights stay [in, out], without it) on a 2-D
activation [batch * sequence, hidden] (the residual stream is kept 2-D throughout), and a tied embedding is one
initializer that both the Gather and the lm_head Gemm read.

Three operator sets (`ops`):
- portable: standard ONNX operators (opset 17) only. RMS norms, rotary embedding, causal + padding mask, GQA head
  repetition and softmax attention are spelled out as transformers computes them. In float16, norms and softmax run
  in float32 between Casts, as transformers upcasts them (an fp16 mean of squares overflows on real activations).
- ort: onnxruntime contrib ops: SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization (residual adds
  fused, float32 statistics inside), GroupQueryAttention with its rotary embedding (cos/sin caches computed by a
  constant subgraph that onnxruntime folds at load), MatMulNBits for quantized weights.
- qdq: the portable set at opset 21, quantized weights as DequantizeLinear (INT4 / UINT4 / INT8 / UINT8, blocked)
  feeding MatMul (convert/onnx/qdq.py): standard operators only, for execution providers without the contrib ops.

Compute types by storage dtype: F32 -> float32; F16 -> float16 (inputs, KV cache and logits float16; on the CPU EP
onnxruntime 1.32 has no float16 Gemm/MatMul/Mul/Neg kernels and inserts Casts around them itself, measured: the
graph runs, within mean KL 1e-5 of transformers fp32, but computes those in float32); BF16 ->
bfloat16 storage computed in float32 (a Cast after each weight, folded by onnxruntime at load): onnxruntime's CPU
EP has no bfloat16 MatMul/Gemm kernels, and float32 compute loses nothing on bf16 weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from modelport.formats.errors import BadInput, Unsupported
from modelport.formats.model import Model, TensorRef
from modelport.formats.onnx import require_onnx

from modelport.convert import archs
from modelport.convert.onnx import moe
from modelport.convert.onnx import nbits as nbits_codec
from modelport.convert.onnx import qdq as qdq_codec
from modelport.convert.onnx import rope as onnx_rope
from modelport.convert.dtypes import FLOATS, cast

OPSET = 17
MS = "com.microsoft"
OPS = ("portable", "ort", "qdq")
OPSETS = {"portable": OPSET, "ort": OPSET, "qdq": qdq_codec.OPSET}  # the qdq set needs DequantizeLinear-21
IR_VERSIONS = {OPSET: 8, qdq_codec.OPSET: 10}  # the IR version each opset (and INT4) came with
QUANTIZED_OPS = {"ort": "MatMulNBits", "qdq": "DequantizeLinear"}  # op set -> what holds its quantized weights
REDUCE_AXES_INPUT = 18  # from this opset ReduceMean takes its axes as an input, not an attribute
COMPUTE = {"F32": "F32", "F16": "F16", "BF16": "F32"}  # storage dtype -> its default compute dtype
QUANT_BITS = {"int4": 4, "int8": 8}
GQA_ROTARY_MULTIPLE = 16  # GroupQueryAttention's partial rotation: cos_cache width a multiple of 8 (onnxruntime 1.32)
NEG = float(np.finfo(np.float32).min)  # the additive mask transformers uses for float32 scores
# transformers' hidden activation names -> the DecoderBuilder method that spells each out
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}


@dataclass
class OnnxGraph:
    """A ModelProto whose initializers are not yet attached, and the lazy tensors to write for them, in order."""

    proto: object
    weights: list[tuple[str, TensorRef]]
    dtype: str  # float storage dtype
    io_dtype: str  # compute dtype: inputs, KV cache, logits
    notes: list[dict] = field(default_factory=list)  # weights that fell back, and why (as api.Result.fallbacks)


class Nodes:
    """Nodes with deterministic names (`/Op_N`), and small constants as Constant nodes (never initializers, so that
    every float initializer is an HF tensor)."""

    def __init__(self):
        self.onnx = require_onnx()
        self.nodes: list = []
        self.count = 0
        self.consts: dict[tuple, str] = {}

    def __call__(self, op: str, *inputs: str, outputs: int | list[str] = 1, domain: str = "", **attrs) -> str | list:
        self.count += 1
        name = f"/{op}_{self.count}"
        outs = [f"{name}/out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), outs, name=name, domain=domain or None,
                                                     **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, value, dtype) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self.consts:
            tensor = self.onnx.numpy_helper.from_array(arr)
            self.consts[key] = self("Constant", value=tensor)
        return self.consts[key]


def elem(dtype: str) -> int:
    tp = require_onnx().TensorProto
    return {"F32": tp.FLOAT, "F16": tp.FLOAT16, "I32": tp.INT32, "BOOL": tp.BOOL}[dtype]


class DecoderBuilder:
    """A decoder's graph from the family's Decoder row. Its weight plumbing (weight, linear, nbits, norms,
    activations) is public because the encoder builder (encoder.py) computes with it too."""

    def __init__(self, model: Model, dtype: str, compute: str, ops: str, quant: str | None, block_size: int,
                 symmetric: bool = False, accuracy_level: int | None = None, lm_head_bits: int | None = None):
        self.model, self.ops, self.quant, self.block_size, self.symmetric = model, ops, quant, block_size, symmetric
        self.accuracy_level = accuracy_level  # MatMulNBits' attribute; None writes none (the op's default, 0)
        self.lm_head_bits = lm_head_bits  # the LM head's (and a tied embedding's) width, if not the --quant one
        self.cfg = archs.for_hf(model.arch).normalize(model.config)
        self.storage, self.compute = dtype, compute
        self.n = Nodes()
        self.weights: dict[str, TensorRef] = {}
        self.casts: dict[str, str] = {}  # weight -> its Cast to the compute type (storage != compute)
        self.notes: list[dict] = []
        c = self.cfg
        self.heads, self.kv_heads, self.head_dim = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        self.np_compute = np.float16 if self.compute == "F16" else np.float32
        self.head_shapes: dict[int, str] = {}  # [B, S, n, D] per head count
        self.windows = sliding_windows(archs.for_hf(model.arch), self.cfg)
        self.knobs = knobs = archs.for_hf(model.arch).onnx.decoder
        self.eps = float(knobs.norm_eps(c))
        self.norm = self.layer_norm if knobs.layer_norm else self.rms_norm
        self.embedding_scale, self.residual_scale = knobs.embedding_scale(c), knobs.residual_scale(c)
        self.attention_scale, self.attention_softcap = knobs.attention_scale(c), knobs.attention_softcap(c)
        self.logit_divisor, self.logit_softcap = knobs.logit_divisor(c), knobs.logit_softcap(c)
        activation = knobs.activation(c)
        if activation not in ACTIVATIONS:
            raise Unsupported(None, f"{model.arch} with hidden activation {activation!r}: the ONNX builder knows "
                                    f"{', '.join(ACTIVATIONS)}")
        self.activation = getattr(self, ACTIVATIONS[activation])
        # each layer's rope, by name: the config's, or default rope at the local layers' own base (gemma3's); none
        # where positions are learned embeddings (gpt2's)
        local_theta = knobs.local_rope_theta(c)
        self.alibi_bias_max, self.clip_qkv = knobs.alibi_bias_max(c), knobs.clip_qkv(c)
        if self.alibi_bias_max and ops == "ort":
            raise Unsupported(None, f"{model.arch}'s ALiBi with --ops ort: the builder's GroupQueryAttention adds no "
                                    f"ALiBi bias; --ops portable or --ops qdq computes it")
        rope = not (knobs.positions or self.alibi_bias_max)
        self.ropes = {"global": onnx_rope.of(model.config, self.head_dim)} if rope else {}
        if local_theta:
            self.ropes["local"] = onnx_rope.of({**model.config, "rope_theta": local_theta, "rope_scaling": None,
                                                "rope_parameters": None}, self.head_dim)
        self.layer_ropes = [None if not rope else "local" if local_theta and w else "global" for w in self.windows]

    # --- weights -------------------------------------------------------------------------------------------------
    def weight(self, name: str) -> str:
        """An HF tensor as an initializer in the storage dtype; its name in compute dtype for the nodes."""
        if name not in self.weights:
            if name not in self.model.tensors:
                files = self.model.metadata.get("source_files") or [None]
                raise BadInput(files[0], f"tensor {name!r} is missing: a {self.model.arch} model needs it")
            self.weights[name] = cast(self.model.tensors[name], self.storage, name)
            if self.storage != self.compute:  # one Cast per weight: onnxruntime folds each into one copy at load
                self.casts[name] = self.n("Cast", name, to=elem(self.compute))
        return self.casts.get(name, name)

    def has(self, name: str) -> bool:
        return name in self.model.tensors

    def linear(self, x: str, prefix: str, bits: int | None = None) -> str:
        """x [rows, in] @ W.T (+ b): Gemm on the HF [out, in] weight (transB=1; a Conv1D's [in, out] as it is), or
        when quantized MatMulNBits (ort) or DequantizeLinear -> MatMul (qdq), float weights at `bits` if given."""
        bias = self.weight(f"{prefix}.bias") if self.has(f"{prefix}.bias") else None
        nbits = self.nbits(f"{prefix}.weight", bits=bits) if self.ops in QUANTIZED_OPS else None
        if nbits is None:
            return self.n("Gemm", x, self.weight(f"{prefix}.weight"), *([bias] if bias else []),
                          transB=int(not self.knobs.conv1d))
        y = self.dequantized_matmul(x, f"{prefix}.weight", nbits) if self.ops == "qdq" else \
            self.matmul_nbits(x, f"{prefix}.weight", nbits)
        return self.n("Add", y, bias) if bias else y

    def matmul_nbits(self, x: str, name: str, nbits: nbits_codec.NBits) -> str:
        parts = [(f"{name}.{part}", getattr(nbits, part)) for part in ("qweight", "scales", "zero_points")
                 if getattr(nbits, part) is not None]
        self.weights.update(parts)
        level = {} if self.accuracy_level is None else {"accuracy_level": self.accuracy_level}
        return self.n("MatMulNBits", x, *(n for n, _ in parts), domain=MS, K=nbits.K, N=nbits.N, bits=nbits.bits,
                      block_size=nbits.block_size, **level)

    def dequantized_matmul(self, x: str, name: str, nbits: nbits_codec.NBits) -> str:
        """x @ DequantizeLinear(W [K, N]): the same values as `nbits`, repacked (contract: `X.weight.quantized`,
        `.scales`, `.zero_points`)."""
        q = qdq_codec.from_nbits(nbits)
        parts = [(f"{name}.{part}", getattr(q, part)) for part in ("quantized", "scales", "zero_points")
                 if getattr(q, part) is not None]
        self.weights.update(parts)
        w = self.n("DequantizeLinear", *(n for n, _ in parts), axis=0, block_size=q.block_size)
        return self.n("MatMul", x, w)

    def nbits(self, name: str, conv1d: bool | None = None, bits: int | None = None) -> nbits_codec.NBits | None:
        """The quantized weight's operands (MatMulNBits' layout; qdq repacks them): a GGUF-quantized weight
        transcoded as it is where its grid fits the op set (no second quantization), a float weight quantized when
        `quant` asks (at `bits`, else its own); None keeps the float Gemm. A Conv1D weight (`conv1d`, the family's by
        default; never an embedding) is quantized as its [out, in] transpose."""
        ref = self.model.tensors[name]
        if self.knobs.conv1d if conv1d is None else conv1d:
            ref = ref.map(np.transpose, shape=ref.shape[::-1])
        if ref.result_dtype not in FLOATS:
            blocks = nbits_codec.from_gguf(ref, self.compute)
            if blocks is not None and (self.ops != "qdq" or qdq_codec.from_nbits(blocks) is not None):
                return blocks
            self.notes.append({"name": name, "fallback": f"{ref.result_dtype} has no {QUANTIZED_OPS[self.ops]} "
                                                         f"form with {self.compute} scales"
                                                         + (" and integer zero points" if self.ops == "qdq" else "")
                                                         + ": dequantized"
                                                         + (f" and quantized to {self.quant}" if self.quant else "")})
        if not self.quant:
            return None
        block = qdq_codec.whole_block(ref.shape[1], self.block_size) if self.ops == "qdq" else self.block_size
        if block != self.block_size:
            self.notes.append({"name": name, "fallback": f"{ref.shape[1]} inputs are no whole number of blocks of "
                                                         f"{self.block_size}: blocks of {block}"})
        return nbits_codec.from_float(ref, bits or QUANT_BITS[self.quant], block, self.compute, self.symmetric)

    def c(self, value, dtype=None) -> str:
        return self.n.const(value, dtype or self.np_compute)

    def i64(self, value) -> str:
        return self.n.const(value, np.int64)

    # --- norms ---------------------------------------------------------------------------------------------------
    def rms_norm(self, x: str, weight: str) -> str:
        """transformers' RMSNorm: float32 statistics, normalised x back in the compute type, times the weight; with
        a norm offset (gemma), times (offset + w) in float32 before going back, as GemmaRMSNorm does."""
        if self.ops == "ort":
            return self.n("SimplifiedLayerNormalization", x, self.norm_scale(weight), axis=-1, epsilon=self.eps,
                          stash_type=1)
        w = self.weight(weight)
        x32 = self.n("Cast", x, to=elem("F32")) if self.compute != "F32" else x
        var = self.reduce_mean(self.n("Mul", x32, x32))
        inv = self.n("Reciprocal", self.n("Sqrt", self.n("Add", var, self.n.const(self.eps, np.float32))))
        y = self.n("Mul", x32, inv)
        if self.knobs.norm_offset:
            w32 = self.n("Cast", w, to=elem("F32")) if self.compute != "F32" else w
            return self.to_compute(self.n("Mul", y, self.n("Add", w32, self.n.const(self.knobs.norm_offset,
                                                                                    np.float32))))
        if self.compute != "F32":
            y = self.n("Cast", y, to=elem(self.compute))
        return self.n("Mul", y, w)

    def layer_norm(self, x: str, weight: str) -> str:
        """nn.LayerNorm, with its bias where it has one (mpt's have none): LayerNormalization (standard from opset
        17), float32 statistics."""
        return self.n("LayerNormalization", x, *self.norm_weights(weight), axis=-1, epsilon=self.eps, stash_type=1)

    def norm_weights(self, weight: str) -> list[str]:
        return [self.weight(w) for w in (weight, _bias(weight)) if w == weight or self.has(w)]

    def norm_scale(self, weight: str) -> str:
        """What the ort norm ops multiply by: the weight, or (offset + w) in the compute type (the HF tensor stays
        the initializer)."""
        w = self.weight(weight)
        return self.n("Add", w, self.c(self.knobs.norm_offset)) if self.knobs.norm_offset else w

    def reduce_mean(self, x: str) -> str:
        """The mean over the last axis, kept: `axes` an attribute before opset 18, an input from it on."""
        if OPSETS[self.ops] >= REDUCE_AXES_INPUT:
            return self.n("ReduceMean", x, self.i64([-1]), keepdims=1)
        return self.n("ReduceMean", x, axes=[-1], keepdims=1)

    def add_norm(self, x: str, residual: str, weight: str) -> tuple[str, str]:
        """(norm(x + residual), x + residual): one fused node with the ort set."""
        if self.ops == "ort" and self.knobs.layer_norm:
            out = self.n("SkipLayerNormalization", x, residual, *self.norm_weights(weight), outputs=4, domain=MS,
                         epsilon=self.eps)
            return out[0], out[3]
        if self.ops == "ort":
            out = self.n("SkipSimplifiedLayerNormalization", x, residual, self.norm_scale(weight),
                         outputs=4, domain=MS, epsilon=self.eps)
            return out[0], out[3]
        total = self.n("Add", x, residual)
        return self.norm(total, weight), total

    # --- shared subgraphs ----------------------------------------------------------------------------------------
    def inputs_info(self):
        self.batch_seq = self.n("Shape", "input_ids")  # [B, S]
        self.rows_last = self.n("Concat", self.batch_seq, self.i64([-1]), axis=0)  # [B, S, -1]
        # the total sequence length T (past + new, attention_mask's), a scalar every subgraph below reads
        self.total = self.n("Gather", self.n("Shape", "attention_mask"), self.i64(1), axis=0)
        if self.ops == "ort":
            mask_sum = self.n("ReduceSum", "attention_mask", self.i64([1]), keepdims=0)
            self.seqlens_k = self.n("Cast", self.n("Sub", mask_sum, self.i64(1)), to=elem("I32"))
            self.total_len = self.n("Cast", self.total, to=elem("I32"))
            self.caches = {rope: self.rope_caches(rope) for rope in self.ropes}
        else:
            self.masks = {w: self.causal_mask(w) for w in sorted(set(self.windows), key=lambda w: w or 0)}
            if self.alibi_bias_max:
                self.masks = {w: self.n("Add", mask, self.alibi()) for w, mask in self.masks.items()}
            self.rope_tables = {rope: self.rope_cos_sin(rope) for rope in self.ropes}

    def rope_caches(self, rope: str) -> tuple[str, str]:
        """[max_positions, rotated dims / 2] cos and sin for GroupQueryAttention, from a subgraph onnxruntime folds;
        LongRoPE's short and long pairs each folded, the switch taking the first total_sequence_length rows of one."""
        dims = self.ropes[rope].dims
        if dims < self.head_dim and dims % GQA_ROTARY_MULTIPLE:
            raise Unsupported(None, f"{self.model.arch} rotating {dims} of {self.head_dim} dimensions per head with "
                                    f"--ops ort: GroupQueryAttention rotates part of a head only in multiples of "
                                    f"{GQA_ROTARY_MULTIPLE} dimensions; --ops portable or qdq computes it")
        positions = self.n("Cast", self.n("Range", self.i64(0), self.i64(self.cfg["max_position_embeddings"]),
                                          self.i64(1)), to=elem("F32"))
        tables = []
        for inv in self.inv_freqs(rope):
            freqs = self.n("Mul", self.n("Unsqueeze", positions, self.i64([1])), self.n.const(inv, np.float32))
            tables.append(tuple(self.trig(fn, freqs, rope) for fn in ("Cos", "Sin")))
        if len(tables) == 1:
            return tables[0]
        (cos, sin), (long_cos, long_sin) = tables
        total = self.n("Unsqueeze", self.total, self.i64([0]))  # [1], as Slice's ends
        longer = self.longer_than(self.ropes[rope].switch)

        def rows(table: str) -> str:  # the first total_sequence_length rows: what GroupQueryAttention reads
            return self.n("Slice", table, self.i64([0]), total, self.i64([0]))

        return (self.n("Where", longer, rows(long_cos), rows(cos)), self.n("Where", longer, rows(long_sin), rows(sin)))

    def inv_freqs(self, rope: str) -> list[np.ndarray]:
        """The rope's inverse frequencies, and LongRoPE's long ones after them."""
        r = self.ropes[rope]
        return [inv for inv in (r.inv_freq, r.long_inv_freq) if inv is not None]

    def longer_than(self, switch: int) -> str:
        """Whether the total sequence length (attention_mask's) passes LongRoPE's switch: transformers'
        max(position_ids) + 1 without left padding."""
        return self.n("Greater", self.total, self.i64(switch))

    def trig(self, fn: str, freqs: str, rope: str) -> str:
        """Cos or Sin of the float32 angles, times LongRoPE's attention factor, in the compute type."""
        scale = self.ropes[rope].scale
        out = self.n(fn, freqs)
        return self.to_compute(out if scale == 1.0 else self.n("Mul", out, self.n.const(scale, np.float32)))

    def to_f32(self, x: str) -> str:
        return x if self.compute == "F32" else self.n("Cast", x, to=elem("F32"))

    def to_compute(self, x32: str) -> str:
        return x32 if self.compute == "F32" else self.n("Cast", x32, to=elem(self.compute))

    def rope_cos_sin(self, rope: str) -> tuple[str, str]:
        """cos and sin [B, 1, S, rotated dims] of position_ids, as transformers' rotary embedding computes them
        (LongRoPE: the short or long frequencies as the switch says)."""
        pos = self.n("Unsqueeze", self.n("Cast", "position_ids", to=elem("F32")), self.i64([-1]))
        invs = [self.n.const(inv, np.float32) for inv in self.inv_freqs(rope)]
        inv = invs[0] if len(invs) == 1 else self.n("Where", self.longer_than(self.ropes[rope].switch), invs[1],
                                                     invs[0])
        freqs = self.n("Mul", pos, inv)  # [B, S, D/2]
        emb = self.n("Concat", freqs, freqs, axis=-1)
        return tuple(self.n("Unsqueeze", self.trig(fn, emb, rope), self.i64([1])) for fn in ("Cos", "Sin"))

    def causal_mask(self, window: int | None) -> str:
        """[B, 1, S, T] float32: 0 where query i may attend key j (j <= past + i, attention_mask[j], and within the
        sliding window: j > past + i - window), else NEG."""
        total = self.total
        seq = self.n("Gather", self.batch_seq, self.i64(1), axis=0)
        past = self.n("Sub", total, seq)
        keys = self.n("Unsqueeze", self.n("Range", self.i64(0), total, self.i64(1)), self.i64([0]))  # [1, T]
        queries = self.n("Unsqueeze", self.n("Range", past, total, self.i64(1)), self.i64([1]))  # [S, 1]
        causal = self.n("LessOrEqual", keys, queries)
        padding = self.n("Unsqueeze", self.n("Cast", "attention_mask", to=elem("BOOL")),
                         self.i64([1, 2]))
        allowed = self.n("And", causal, padding)
        if window:
            recent = self.n("Greater", keys, self.n("Sub", queries, self.i64(window)))
            allowed = self.n("And", allowed, recent)
        return self.n("Where", allowed, self.n.const(0.0, np.float32), self.n.const(NEG, np.float32))

    def alibi(self) -> str:
        """[1, heads, 1, T] float32: each head's slope times the key's distance from the last key (<= 0), as
        transformers' build_mpt_alibi_tensor (a row's constant shift leaves its softmax as it is)."""
        distance = self.n("Range", self.n("Sub", self.i64(1), self.total), self.i64(1), self.i64(1))
        return self.n("Mul", self.n("Cast", distance, to=elem("F32")),
                      self.n.const(alibi_slopes(self.heads, self.alibi_bias_max).reshape(1, -1, 1, 1), np.float32))

    # --- attention -----------------------------------------------------------------------------------------------
    def heads_view(self, x: str, n_heads: int, norm: str | None) -> str:
        """[rows, n * D] -> [B, n, S, D], with qwen3's per-head RMS norm."""
        if n_heads not in self.head_shapes:
            self.head_shapes[n_heads] = self.n("Concat", self.batch_seq, self.i64([n_heads, self.head_dim]), axis=0)
        x = self.n("Reshape", x, self.head_shapes[n_heads])
        if norm:
            x = self.rms_norm(x, norm)
        return self.n("Transpose", x, perm=[0, 2, 1, 3])

    def rotate(self, x: str, layer: int) -> str:
        """x * cos + rotate_half(x) * sin on the rotated dimensions; the rest of each head passes (partial rotary);
        x itself without rope."""
        if self.layer_ropes[layer] is None:
            return x
        cos, sin = self.rope_tables[self.layer_ropes[layer]]
        dims = self.ropes[self.layer_ropes[layer]].dims
        part = self.n("Slice", x, self.i64([0]), self.i64([dims]), self.i64([-1])) if dims < self.head_dim else x
        lo = self.n("Slice", part, self.i64([0]), self.i64([dims // 2]), self.i64([-1]))
        hi = self.n("Slice", part, self.i64([dims // 2]), self.i64([dims]), self.i64([-1]))
        rotated = self.n("Concat", self.n("Neg", hi), lo, axis=-1)
        out = self.n("Add", self.n("Mul", part, cos), self.n("Mul", rotated, sin))
        if dims == self.head_dim:
            return out
        rest = self.n("Slice", x, self.i64([dims]), self.i64([self.head_dim]), self.i64([-1]))
        return self.n("Concat", out, rest, axis=-1)

    def repeat_kv(self, x: str) -> str:
        rep = self.heads // self.kv_heads
        if rep == 1:
            return x
        x = self.n("Expand", self.n("Unsqueeze", x, self.i64([2])), self.i64([1, 1, rep, 1, 1]))
        return self.n("Reshape", x, self.i64([0, self.heads, -1, self.head_dim]))

    def attention_portable(self, q: str, k: str, v: str, layer: int, p: str) -> str:
        q = self.rotate(self.heads_view(q, self.heads, self.norm_name(p, "q")), layer)
        k = self.rotate(self.heads_view(k, self.kv_heads, self.norm_name(p, "k")), layer)
        v = self.heads_view(v, self.kv_heads, None)
        key = self.n("Concat", f"past_key_values.{layer}.key", k, outputs=[f"present.{layer}.key"], axis=2)
        value = self.n("Concat", f"past_key_values.{layer}.value", v, outputs=[f"present.{layer}.value"], axis=2)
        scores = self.n("MatMul", q, self.n("Transpose", self.repeat_kv(key), perm=[0, 1, 3, 2]))
        scores = self.n("Mul", scores, self.c(self.attention_scale))
        if self.attention_softcap:
            scores = self.softcap(scores, self.attention_softcap)
        if self.compute != "F32":
            scores = self.n("Cast", scores, to=elem("F32"))
        probs = self.to_compute(self.n("Softmax", self.n("Add", scores, self.masks[self.windows[layer]]), axis=-1))
        out = self.n("Transpose", self.n("MatMul", probs, self.repeat_kv(value)), perm=[0, 2, 1, 3])
        return self.n("Reshape", out, self.i64([-1, self.heads * self.head_dim]))

    def attention_ort(self, q: str, k: str, v: str, layer: int, p: str) -> str:
        for which in "qk":
            norm = self.norm_name(p, which)
            if norm:
                x = q if which == "q" else k
                normed = self.n("Reshape", self.rms_norm(self.n("Reshape", x, self.i64([-1, self.head_dim])), norm),
                                self.i64([-1, (self.heads if which == "q" else self.kv_heads) * self.head_dim]))
                q, k = (normed, k) if which == "q" else (q, normed)
        q, k, v = (self.n("Reshape", t, self.rows_last) for t in (q, k, v))
        out = self.n("GroupQueryAttention", q, k, v, f"past_key_values.{layer}.key", f"past_key_values.{layer}.value",
                     self.seqlens_k, self.total_len, *self.caches.get(self.layer_ropes[layer], ()),
                     outputs=[f"/attn_{layer}/out", f"present.{layer}.key", f"present.{layer}.value"], domain=MS,
                     num_heads=self.heads, kv_num_heads=self.kv_heads, scale=self.attention_scale,
                     do_rotary=int(self.layer_ropes[layer] is not None),
                     rotary_interleaved=0, **self.gqa_window(layer), **self.gqa_softcap())[0]
        return self.n("Reshape", out, self.i64([-1, self.heads * self.head_dim]))

    def gqa_window(self, layer: int) -> dict:
        """GroupQueryAttention's local_window_size equals transformers' sliding_window (measured against it: a
        window of 5 on 16 tokens matches to 1e-5 whole and step by step; window - 1 does not)."""
        window = self.windows[layer]
        return {"local_window_size": window} if window else {}

    def gqa_softcap(self) -> dict:
        """GroupQueryAttention caps the scaled scores as transformers does: softcap * tanh(scores / softcap)."""
        return {"softcap": float(self.attention_softcap)} if self.attention_softcap else {}

    def softcap(self, x: str, cap: float) -> str:
        return self.n("Mul", self.n("Tanh", self.n("Div", x, self.c(cap))), self.c(cap))

    # --- activations: ACTIVATIONS maps transformers' names to these ------------------------------------------------
    def silu(self, x: str) -> str:
        return self.n("Mul", x, self.n("Sigmoid", x))

    def gelu_tanh(self, x: str) -> str:
        """0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), torch's gelu(approximate="tanh") (no Gelu op before
        opset 20)."""
        cube = self.n("Mul", self.n("Mul", x, x), x)
        inner = self.n("Mul", self.n("Add", x, self.n("Mul", cube, self.c(0.044715))), self.c(np.sqrt(2 / np.pi)))
        return self.n("Mul", self.n("Mul", x, self.c(0.5)), self.n("Add", self.n("Tanh", inner), self.c(1.0)))

    def gelu(self, x: str) -> str:
        """0.5 x (1 + erf(x / sqrt(2))), torch's exact gelu."""
        erf = self.n("Erf", self.n("Div", x, self.c(np.sqrt(2.0))))
        return self.n("Mul", self.n("Mul", x, self.c(0.5)), self.n("Add", erf, self.c(1.0)))

    def clip(self, x: str) -> str:
        return self.n("Clip", x, self.c(-self.clip_qkv), self.c(self.clip_qkv)) if self.clip_qkv else x

    def norm_name(self, prefix: str, which: str) -> str | None:
        name = f"{prefix}.{self.knobs.attention[0]}.{which}_norm.weight"
        return name if self.has(name) else None

    # --- the decoder ---------------------------------------------------------------------------------------------
    def build(self) -> OnnxGraph:
        self.inputs_info()
        embed = f"{self.knobs.embed}.weight"
        tied = self.tied_nbits(embed)
        rows = self.n("Gather", self.weight(embed), "input_ids", axis=0) if tied is None else \
            self.gather_nbits(embed, tied)
        hidden = self.n("Reshape", rows, self.i64([-1, self.cfg["hidden_size"]]))
        if self.knobs.positions:  # learned position embeddings, added as transformers adds them
            positions = self.n("Gather", self.weight(f"{self.knobs.positions}.weight"), "position_ids", axis=0)
            hidden = self.n("Add", hidden, self.n("Reshape", positions, self.i64([-1, self.cfg["hidden_size"]])))
        if self.embedding_scale:  # in the compute type, as transformers scales them (gemma's normalizer too)
            hidden = self.n("Mul", hidden, self.c(self.embedding_scale))
        attention = self.attention_ort if self.ops == "ort" else self.attention_portable
        attn_in, attn_out, mlp_in, mlp_out = self.knobs.norms(self.cfg)
        self_attn, o_proj = self.knobs.attention
        residual, x = hidden, self.norm(hidden, f"{self.knobs.layers}.0.{attn_in}.weight")
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"{self.knobs.layers}.{i}"
            if i:
                x, residual = self.add_norm(x, residual, f"{p}.{attn_in}.weight")
            mlp_x = (self.norm(residual, f"{p}.{mlp_in}.weight") if mlp_in else x) if self.knobs.parallel else None
            q, k, v = self.qkv(x, f"{p}.{self_attn}")
            attn = self.branch(self.linear(attention(q, k, v, i, p), f"{p}.{self_attn}.{o_proj}"), p, attn_out)
            if self.knobs.parallel:  # transformers' mlp_output += attention_output; the residual add comes next
                x = self.n("Add", self.branch(self.mlp(mlp_x, p), p, mlp_out), attn)
                continue
            x, residual = self.add_norm(attn, residual, f"{p}.{mlp_in}.weight")
            x = self.branch(self.mlp(x, p), p, mlp_out)
        x, _ = self.add_norm(x, residual, f"{self.knobs.final_norm}.weight")
        if self.untied():
            logits = self.linear(x, "lm_head", self.lm_head_bits)
        elif tied is not None:  # the GatherBlockQuantized's initializers
            logits = self.matmul_nbits(x, embed, tied)
        else:  # the embedding's one initializer serves the Gather and this Gemm
            logits = self.n("Gemm", x, self.weight(embed), transB=1)
        if self.logit_divisor:
            logits = self.n("Div", logits, self.c(self.logit_divisor))
        if self.logit_softcap:
            logits = self.softcap(logits, self.logit_softcap)
        self.n("Reshape", logits, self.rows_last, outputs=["logits"])
        return OnnxGraph(self.proto(), list(self.weights.items()), self.storage, self.compute, self.notes)

    def untied(self) -> bool:
        return self.has("lm_head.weight") and not self.cfg.get("tie_word_embeddings")

    def tied_nbits(self, embed: str) -> nbits_codec.NBits | None:
        """A tied embedding quantized once for both its uses (--quant, --ops ort), as onnxruntime-genai's builder
        shares it: the lm_head's MatMulNBits and a GatherBlockQuantized over the same initializers. Only 4-bit
        operands (8-bit with --lm-head int8) with uint8 or default zero points (what the op takes; --quant int8, or
        a GGUF grid of another width or with float zero points, keeps the float table). An untied embedding stays
        float, as in the builder by default (it quantizes Gather only for shared embeddings): its table is read a
        row per token, so quantizing it would save only file size."""
        if self.untied() or not self.quant or self.ops != "ort":
            return None
        nbits = self.nbits(embed, conv1d=False, bits=self.lm_head_bits)
        if nbits is None or nbits.bits != (self.lm_head_bits or 4) or \
                (nbits.zero_points is not None and nbits.zero_points.dtype != "U8"):
            return None
        return nbits

    def gather_nbits(self, embed: str, nbits: nbits_codec.NBits) -> str:
        """Rows of input_ids from MatMulNBits operands [N, blocks, bytes], [N * blocks], [N * packed zero points]:
        GatherBlockQuantized takes each as [N, -1] (Reshapes onnxruntime folds at load) and dequantizes to the
        scales' type; the blocks' padding of K is sliced off."""
        parts = [f"{embed}.{part}" for part in ("qweight", "scales", "zero_points") if getattr(nbits, part) is not None]
        self.weights.update((name, getattr(nbits, name.rsplit(".", 1)[1])) for name in parts)
        data, *rest = [self.n("Reshape", name, self.i64([nbits.N, -1])) for name in parts]
        rows = self.n("GatherBlockQuantized", data, "input_ids", *rest, domain=MS, bits=nbits.bits,
                      block_size=nbits.block_size, gather_axis=0, quantize_axis=1)
        if nbits.K % nbits.block_size:
            rows = self.n("Slice", rows, self.i64([0]), self.i64([nbits.K]), self.i64([-1]))
        return rows

    def mlp(self, x: str, prefix: str) -> str:
        """down(activation(gate(x)) * up(x)), or down(activation(up(x))) without a gate (starcoder2's c_fc, c_proj)."""
        if self.knobs.experts:  # a sparse mixture of experts in its place (convert/onnx/moe.py)
            return moe.block(self, x, prefix)
        gate, up, down = self.knobs.mlp
        prefix = f"{prefix}.{self.knobs.mlp_module}"
        if gate is None:
            return self.linear(self.activation(self.linear(x, f"{prefix}.{up}")), f"{prefix}.{down}")
        gate, up = self.projections(x, prefix, (gate, up), [self.cfg["intermediate_size"]] * 2)
        return self.linear(self.n("Mul", self.activation(gate), up), f"{prefix}.{down}")

    def qkv(self, x: str, prefix: str) -> list[str]:
        """q, k, v [rows, heads * head_dim]; a grouped fused projection (falcon's) viewed as [rows, n_kv, n_head /
        n_kv + 2, head_dim] and split on its third axis, so that query head h meets kv head h // (n_head / n_kv), as
        both transformers' grouped attention and GroupQueryAttention pair them."""
        sizes = [n * self.head_dim for n in (self.heads, self.kv_heads, self.kv_heads)]
        if not self.knobs.qkv_grouped:
            return self.projections(x, prefix, self.knobs.qkv, sizes, self.clip)
        per_kv = self.heads // self.kv_heads
        fused = self.clip(self.linear(x, f"{prefix}.{self.knobs.qkv[0]}"))
        groups = self.n("Reshape", fused, self.i64([0, self.kv_heads, per_kv + 2, self.head_dim]))
        parts = self.n("Split", groups, self.i64([per_kv, 1, 1]), axis=2, outputs=3)
        return [self.n("Reshape", t, self.i64([0, size])) for t, size in zip(parts, sizes)]

    def projections(self, x: str, prefix: str, names: tuple[str, ...], sizes: list[int],
                    then=lambda y: y) -> list[str]:
        """x through each named projection, then `then` (mpt's clip_qkv); one name repeated is one fused projection
        (phi3's qkv_proj, gate_up_proj) whose output splits into `sizes`, in order."""
        if len(set(names)) < len(names):
            return self.n("Split", then(self.linear(x, f"{prefix}.{names[0]}")), self.i64(sizes), axis=-1,
                          outputs=len(names))
        return [then(self.linear(x, f"{prefix}.{name}")) for name in names]

    def branch(self, x: str, prefix: str, norm: str | None) -> str:
        """A block's attention or MLP output as it joins the residual stream: normed (gemma2's post norms) and
        scaled (granite's residual multiplier) where the family says."""
        if norm:
            x = self.norm(x, f"{prefix}.{norm}.weight")
        return self.n("Mul", x, self.c(self.residual_scale)) if self.residual_scale else x

    def proto(self):
        onnx = require_onnx()
        h, tp = onnx.helper, onnx.TensorProto
        io, kv = elem(self.compute), [self.kv_heads, self.head_dim]
        inputs = [h.make_tensor_value_info("input_ids", tp.INT64, ["batch_size", "sequence_length"]),
                  h.make_tensor_value_info("attention_mask", tp.INT64, ["batch_size", "total_sequence_length"]),
                  h.make_tensor_value_info("position_ids", tp.INT64, ["batch_size", "sequence_length"])]
        outputs = [h.make_tensor_value_info("logits", io, ["batch_size", "sequence_length", self.cfg["vocab_size"]])]
        for i in range(self.cfg["num_hidden_layers"]):
            for t in ("key", "value"):
                inputs.append(h.make_tensor_value_info(f"past_key_values.{i}.{t}", io,
                                                       ["batch_size", kv[0], "past_sequence_length", kv[1]]))
                outputs.append(h.make_tensor_value_info(f"present.{i}.{t}", io,
                                                        ["batch_size", kv[0], "total_sequence_length", kv[1]]))
        graph = h.make_graph(self.n.nodes, self.model.arch, inputs, outputs)
        opset = OPSETS[self.ops]
        opsets = [h.make_opsetid("", opset)] + ([h.make_opsetid(MS, 1)] if self.ops == "ort" else [])
        model = h.make_model(graph, opset_imports=opsets, producer_name="modelport", ir_version=IR_VERSIONS[opset])
        return model


def _bias(weight: str) -> str:
    return weight.removesuffix("weight") + "bias"


def alibi_slopes(heads: int, bias_max: float) -> np.ndarray:
    """transformers' build_mpt_alibi_tensor slopes, in float32: 2^-(bias_max * i / n) for i = 1..n, n the next power
    of two; fewer heads take the odd-numbered slopes first, then the even."""
    n = 2 ** int(np.ceil(np.log2(heads)))
    base = np.arange(1, n + 1, dtype=np.float32) * np.float32(bias_max / n)
    slopes = np.float32(1.0) / np.power(np.float32(2), base)
    return np.concatenate([slopes[1::2], slopes[::2]])[:heads] if n != heads else slopes


def sliding_windows(arch: archs.Arch, cfg: dict) -> list[int | None]:
    """Each layer's sliding attention window (None: full causal attention), as transformers reads the config:
    `layer_types` where the config has them (qwen2, qwen3) or its config class fills them in (gemma2), else mistral's
    one `sliding_window` for every layer."""
    n, window = cfg["num_hidden_layers"], cfg.get("sliding_window")
    types = cfg.get("layer_types") or arch.onnx.decoder.layer_types(cfg)
    if types:
        return [window if t == "sliding_attention" else None for t in types]
    return [window if arch.onnx.sliding_window_everywhere else None] * n


def build(model: Model, dtype: str | None = None, ops: str = "portable", quant: str | None = None,
          block_size: int = 32, symmetric: bool = False, accuracy_level: int | None = None,
          lm_head_bits: int | None = None) -> OnnxGraph:
    """The decoder graph of `model` in `ops`' operator set, weights stored as `dtype` (default: the source's
    float precision); `symmetric` quantizes float weights without zero points; `accuracy_level` is every
    MatMulNBits' (the minimum precision of its activations: 0 unset, 1 f32, 2 f16, 3 bf16, 4 int8); `lm_head_bits`
    quantizes the LM head (and a tied embedding) at that width instead of `quant`'s."""
    dtype, compute = resolve(model, dtype, ops, quant, accuracy_level, lm_head_bits)
    return DecoderBuilder(model, dtype, compute, ops, quant, block_size, symmetric, accuracy_level, lm_head_bits).build()


def resolve(model: Model, dtype: str | None, ops: str, quant: str | None, accuracy_level: int | None = None,
            lm_head_bits: int | None = None) -> tuple[str, str]:
    """(storage, compute) dtypes of `model`'s graph, after refusing an unknown op set, quantization or option
    combination (shared with the encoder builder)."""
    if ops not in OPS:
        raise Unsupported(None, f"unknown operator set {ops!r}; choose one of {', '.join(OPS)}")
    if quant and quant not in QUANT_BITS:
        raise Unsupported(None, f"ONNX --quant is one of {', '.join(QUANT_BITS)}, not {quant!r}")
    if quant and ops not in QUANTIZED_OPS:
        raise Unsupported(None, f"--quant {quant} needs an operator set that holds quantized weights: --ops "
                                + " or --ops ".join(f"{o} ({op})" for o, op in QUANTIZED_OPS.items()))
    # checked here, not when options resolve: a recipe checks each option alone first
    if accuracy_level is not None and (ops != "ort" or not quant):
        raise BadInput(None, "--accuracy-level is MatMulNBits': it needs --quant int4 or int8 with --ops ort")
    if lm_head_bits and (ops != "ort" or quant != "int4"):
        raise BadInput(None, f"--lm-head int{lm_head_bits} needs --quant int4 with --ops ort")
    # a GGUF-quantized source, quantized ops, no --dtype: float leftovers stored F16 but computed in F32, whose scales
    # every GGUF grid transcodes to (K-quant scales are products that F16 would round)
    compute = "F32" if dtype is None and ops in QUANTIZED_OPS and _quantized(model) else None
    dtype = dtype or _source_dtype(model)
    if dtype not in FLOATS:
        raise Unsupported(None, f"ONNX weights are stored as f32, f16 or bf16, not {dtype}")
    return dtype, compute or COMPUTE[dtype]


def _quantized(model: Model) -> bool:
    return any(r.result_dtype not in FLOATS for r in model.tensors.values())


def _source_dtype(model: Model) -> str:
    """The source's float precision; a quantized GGUF's float type (F16) otherwise."""
    first = next((r for r in model.tensors.values() if len(r.shape) > 1), None)
    if first is not None and first.result_dtype in FLOATS:
        return first.result_dtype
    return model.metadata.get("dtype") if model.metadata.get("dtype") in FLOATS else "F16"
