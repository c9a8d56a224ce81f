"""ONNX's native view -> the pivot, for our own graphs and for decoders exported by optimum / torch.onnx.

Our graphs keep the HF tensor names and layouts (MatMulNBits weights `X.weight.qweight/.scales/.zero_points` and
DequantizeLinear weights `X.weight.quantized/.scales/.zero_points` are dequantized back to a float `X.weight`, lazily:
the values the graph computes with), and record the source config.json in `modelport.source.config`.

Exported graphs rename their MatMul weights (`onnx::MatMul_123`), store them transposed ([K, N]) and share duplicates,
so their HF names are recovered from the graph's structure, walking the data flow from `input_ids`: the embedding is
the Gather fed by input_ids; a norm's weight is the first Mul by a 1-D initializer after the residual stream (or a
norm op's scale; gemma's exports fold its 1 + w into it, and the walk takes the 1 off); the projections fed by that norm's output are q/k/v, told apart by where they enter attention
(scores MatMul operand 0 = q, operand 1 = k, context MatMul operand 1 = v, or a fused attention op's q/k/v inputs);
o_proj is the next weighted MatMul after attention; the residual is the first Add of two computed tensors after it;
in the MLP the projection that reaches an activation is gate, the other up, and down is the next weighted MatMul.
A weight is a MatMul's B (transposed, or a Transpose of the HF-laid initializer), a Gemm's (transB says),
MatMulNBits blobs (an export quantized afterwards) or the DequantizeLinear of an initializer in B's place (a QDQ
export: onnxruntime's QDQ quantizer, ours). Node names are never consulted: exporters rename nodes from
version to version. The walk knows the llama-like families (those whose ONNX section says read_back), with the norms
around attention and the MLP their Decoder row names (gemma2's and gemma3's post norms), and the tensor names it
gives; and falcon's block: a LayerNormalization's bias beside its scale, one fused projection that reaches q, k and
v, attention and an ungated MLP side by side on one norm's output (or on two norms, attention's first), summed
before the residual Add. A routed mixture of experts (qwen3_moe's, as optimum unrolls it per expert): the router is the
projection whose logits reach TopK, each expert a gated MLP on rows Gathered from the norm's output, numbered in the
order of the exporter's loop over the experts; their scattered sum joins the residual Add the block's input feeds.
onnx has no library for it.

onnxruntime-genai's builder fuses more: a skip norm adds the residual in and normalises the sum (the walk takes it as
both residual and norm), q, k and v are one packed MatMul into GroupQueryAttention (split by its heads, or kept whole
for phi3's qkv_proj), phi3's gate_up_proj is two MatMuls (joined), and a tied float embedding is a Gather over the
Transpose of the LM head's weight. Its folders keep no config.json: convert/onnx/genai_config.py rebuilds one.
"""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from modelport.formats import inputs, jsonfile
from modelport.formats.errors import BadInput, Unsupported
from modelport.formats.model import Model, TensorRef
from modelport.formats.onnx import OnnxContents
from modelport.formats.safetensors import TOKENIZER_FILES

from modelport.convert import archs, experts
from modelport.convert.archs import dims
from modelport.convert.archs.base import Decoder
from modelport.convert.dtypes import FLOATS, cast
from modelport.convert.gguf import sentence_transformers
from modelport.convert.onnx import genai_config, qdq
from modelport.convert.provenance import CONFIG as CONFIG_KEY
from modelport.convert.provenance import CONFIG_REBUILT

# families whose block the walk knows: norm, attention (q, k, v, o), norm, gated MLP, with llama's tensor names
QWEIGHT = ".qweight"  # contract: HF `X.weight` as MatMulNBits is `X.weight.qweight`, `.scales`, `.zero_points`
QUANTIZED = ".quantized"  # contract: HF `X.weight` as DequantizeLinear [K, N] is `X.weight.quantized`, ...

WEIGHTED = {"MatMul": 1, "Gemm": 1, "MatMulNBits": 1}  # op -> input slot of its weight
# how a weight initializer is stored, relative to HF's [out, in]
AS_HF, TRANSPOSED, NBITS = "hf", "transposed", "nbits"
NORM = "norm"  # a norm's scale: w, or for a family whose norms apply (offset + w) the exporter's folded offset + w
DEQUANTIZED = {"qdq-hf": AS_HF, "qdq-transposed": TRANSPOSED}  # a DequantizeLinear's weight, then laid out as named
NORM_OPS = {"SimplifiedLayerNormalization": 1, "RMSNormalization": 1, "LayerNormalization": 1,  # op -> scale slot
            "SkipSimplifiedLayerNormalization": 2, "SkipLayerNormalization": 2}
# norms that add their inputs 0 and 1 first (the residual, output 3) and normalise the sum (output 0)
SKIP_NORMS = {"SkipSimplifiedLayerNormalization", "SkipLayerNormalization"}
# RMSNorm pieces, and the Reshape of our graphs' embedding to rows before the first norm
NORM_PATH = {"Cast", "Pow", "Mul", "ReduceMean", "Add", "Sqrt", "Reciprocal", "Div", "Identity", "Reshape"}
FUSED_ATTENTION = {"Attention", "GroupQueryAttention", "MultiHeadAttention"}  # inputs 0, 1, 2 = q, k, v
ACTIVATIONS = {"Sigmoid", "Tanh", "Erf", "Relu", "Gelu", "FastGelu", "QuickGelu", "BiasGelu", "Silu", "HardSigmoid",
               "Softplus", "Elu", "Selu", "Mish"}
LAYOUT_OPS = {"Cast", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Slice"}  # between a norm and its products
METADATA_OPS = {"Shape", "Size"}  # their outputs are sizes, not values: the walk never goes through them
PACKED = ("q_proj", "k_proj", "v_proj")  # a packed projection's rows, as onnxruntime-genai's builder packs them
ATTENTION_SLOTS = {("scores", 0): "q_proj", ("scores", 1): "k_proj", ("context", 1): "v_proj", ("fused", 0): "q_proj",
                   ("fused", 1): "k_proj", ("fused", 2): "v_proj"}
QK_NORMS = {"q_proj": "q_norm", "k_proj": "k_norm"}  # qwen3's per-head norms between a projection and attention
FUSED_QK_NORMS = {"GroupQueryAttention": {14: "q_norm", 15: "k_norm"}}  # op -> slot of its own per-head norm scales


def _dequantize(q: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, k: int, n: int, bits: int,
                block: int) -> np.ndarray:
    """MatMulNBits blobs -> float32 [N, K]: values packed low bits first, (q - zero point) * scale per block, the
    zero point 2^(bits-1) when absent (onnxruntime's contrib op spec; no library offers the inverse)."""
    n_blocks = q.shape[1]
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    mask = np.uint8((1 << bits) - 1)
    values = ((q[..., None] >> shifts) & mask).reshape(n, n_blocks, -1)[:, :, :block].astype(np.float32)
    if zero_points is None:
        zp = np.full((n, n_blocks), 1 << (bits - 1), np.float32)
    elif zero_points.dtype == np.uint8:
        zp = ((zero_points.reshape(n, -1)[..., None] >> shifts) & mask).reshape(n, -1)[:, :n_blocks].astype(np.float32)
    else:
        zp = zero_points.astype(np.float32).reshape(n, n_blocks)
    out = (values - zp[..., None]) * scales.astype(np.float32).reshape(n, n_blocks)[..., None]
    return out.reshape(n, n_blocks * block)[:, :k]


@dataclass
class _Graph:
    """Who produces and who consumes each tensor of the (top-level) graph, and which tensors are constants."""

    nodes: list
    inits: dict[str, TensorRef]
    producer: dict[str, int]
    consumers: dict[str, list[tuple[int, int]]]
    constants: set[str]

    @classmethod
    def of(cls, contents: OnnxContents) -> "_Graph":
        nodes = list(contents.proto.graph.node)
        producer, consumers = {}, {}
        for i, node in enumerate(nodes):
            for out in node.output:
                producer[out] = i
            for slot, name in enumerate(node.input):
                consumers.setdefault(name, []).append((i, slot))
        constants = set(contents.tensors) | {o for n in nodes if n.op_type == "Constant" for o in n.output}
        constants |= {n.output[0] for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in contents.tensors}
        return cls(nodes, contents.tensors, producer, consumers, constants)

    def dequantized(self, name: str) -> str | None:
        """The initializer a DequantizeLinear turns into `name`, if one does."""
        node = self.nodes[self.producer[name]] if name in self.producer else None
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in self.inits:
            return node.input[0]
        return None

    def computed(self, name: str) -> bool:
        return bool(name) and name not in self.constants

    def reach(self, start: str, found: Callable[[object, int], bool], passes: Callable[[object], bool]
              ) -> list[tuple[int, int]]:
        """(node, input slot) pairs where `found` holds, breadth first from `start`, going on only through nodes
        where `passes` holds (never through size computations)."""
        hits, expanded, queue = [], set(), deque([start])
        while queue:
            for i, slot in self.consumers.get(queue.popleft(), ()):
                node = self.nodes[i]
                if node.op_type in METADATA_OPS:
                    continue
                if found(node, slot):
                    if (i, slot) not in hits:
                        hits.append((i, slot))
                elif i not in expanded and passes(node):
                    expanded.add(i)
                    queue.extend(node.output)
        return hits

    def first(self, start: str, found, passes, what: str, path: Path, nth: int = 0) -> tuple[int, int]:
        """The first hit of reach() (or the nth after it)."""
        hits = self.reach(start, found, passes)
        if len(hits) <= nth:
            raise Unsupported(path, f"ONNX graph: no {what} found walking from {start!r}; modelport reads back its "
                                    "own graphs and decoder exports by optimum / torch.onnx")
        return hits[nth]

    # --- what a node is
    def table(self, node) -> tuple[str, str] | None:
        """(initializer, layout) of an embedding lookup: a Gather's float table (or the Transpose of a tied LM
        head's, onnxruntime-genai's float tied embeddings), or the MatMulNBits blobs a GatherBlockQuantized reads
        (through a Reshape to rows), as a tied int4 embedding is stored (ours, onnxruntime-genai's shared
        embeddings)."""
        data = node.input[0] if node.input else ""
        layout = AS_HF if node.op_type == "Gather" else NBITS
        if data in self.producer:
            src = self.nodes[self.producer[data]]
            if node.op_type == "GatherBlockQuantized" and src.op_type == "Reshape":
                data = src.input[0]
            elif node.op_type == "Gather" and src.op_type == "Transpose" and src.input[0] in self.inits and \
                    next((list(a.ints) for a in src.attribute if a.name == "perm"), [1, 0]) == [1, 0]:
                data, layout = src.input[0], TRANSPOSED  # the LM head's [K, N] weight, shared (genai's tied)
        if data not in self.inits or node.op_type not in ("Gather", "GatherBlockQuantized"):
            return None
        return data, layout

    def weight(self, node) -> tuple[str, str] | None:
        """(initializer, layout) of a weighted node: MatMul's B is [K, N] unless it is a Transpose of the HF
        [N, K] initializer; Gemm says so with transB; MatMulNBits blobs are rows of N."""
        if node.op_type not in WEIGHTED or len(node.input) <= WEIGHTED[node.op_type]:
            return None
        b = node.input[WEIGHTED[node.op_type]]
        if node.op_type == "MatMulNBits":
            return (b, NBITS) if b in self.inits else None
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            if self.dequantized(b):
                return self.dequantized(b), "qdq-hf" if trans_b else "qdq-transposed"
            return (b, AS_HF if trans_b else TRANSPOSED) if b in self.inits else None
        if b in self.inits:
            return b, TRANSPOSED
        if self.dequantized(b):
            return self.dequantized(b), "qdq-transposed"
        src = self.nodes[self.producer[b]] if b in self.producer else None
        if src is not None and src.op_type == "Transpose" and src.input[0] in self.inits:
            perm = next((list(a.ints) for a in src.attribute if a.name == "perm"), [1, 0])
            return (src.input[0], AS_HF) if perm == [1, 0] else None
        return None

    def norm_scale(self, node) -> str | None:
        """The weight of a norm: a norm op's scale, or the 1-D initializer an RMSNorm's pieces end multiplying by."""
        if node.op_type in NORM_OPS and len(node.input) > NORM_OPS[node.op_type]:
            scale = node.input[NORM_OPS[node.op_type]]
            return scale if scale in self.inits else None
        if node.op_type == "Mul":
            return next((x for x in node.input if x in self.inits and len(self.inits[x].shape) == 1
                         and self.inits[x].shape[0] > 1), None)
        return None

    def in_norm(self, node) -> bool:
        """A piece of an RMSNorm: the residual Add (two computed operands) is not."""
        if node.op_type == "Add":
            return not all(self.computed(x) for x in node.input)
        return node.op_type in NORM_PATH

    def attention_use(self, node, slot: int) -> str | None:
        """How a tensor enters attention at (node, slot): `scores`/`context` MatMul of two computed operands (the
        scores one is followed by Softmax) or a fused attention op."""
        if node.op_type in FUSED_ATTENTION:
            return "fused"
        if node.op_type != "MatMul" or not all(self.computed(x) for x in node.input):
            return None
        to_softmax = self.reach(node.output[0], lambda n, s: n.op_type == "Softmax",
                                lambda n: n.op_type not in WEIGHTED and n.op_type != "MatMul")
        return "scores" if to_softmax else "context"


class _Walk:
    """The walk from input_ids to logits, collecting HF name -> (initializer, layout)."""

    def __init__(self, graph: _Graph, path: Path, decoder: Decoder):
        self.g, self.path, self.d = graph, path, decoder
        self.names: dict[str, tuple[str, str]] = {}
        self.parts: dict[str, tuple[int, int]] = {}  # HF name -> its rows of a packed initializer
        self.joined: dict[str, tuple[str, str]] = {}  # HF name -> the (initializer, layout) of its second rows

    def _not_weighted(self, node) -> bool:
        return self.g.weight(node) is None

    def _norm(self, x: str, hf: str, second: bool = False) -> str:
        """The first norm after `x` (its weight, and a LayerNormalization's bias); `second`: the next one, the MLP's
        of a parallel block with two (falcon 40B's ln_mlp, which transformers computes after ln_attn)."""
        i, _ = self.g.first(x, lambda n, s: self.g.norm_scale(n) is not None, self.g.in_norm, f"norm for {hf}",
                            self.path, nth=int(second))
        node = self.g.nodes[i]
        self.names[hf] = (self.g.norm_scale(node), NORM)
        if node.op_type == "LayerNormalization" and len(node.input) > 2 and node.input[2] in self.g.inits:
            self.names[hf.removesuffix("weight") + "bias"] = (node.input[2], AS_HF)
        return node.output[0]

    def _projections(self, x: str) -> list[int]:
        """The weighted nodes fed by `x` (through casts and reshapes only)."""
        hits = self.g.reach(x, lambda n, s: self.g.weight(n) is not None, lambda n: n.op_type in LAYOUT_OPS)
        return [i for i, _ in hits]

    def _linear(self, i: int, hf: str) -> str:
        """Name a weighted node's weight (and its bias, an Add of a 1-D initializer); its output."""
        node = self.g.nodes[i]
        self.names[hf + ".weight"] = self.g.weight(node)
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else None
        for j, _ in self.g.consumers.get(node.output[0], ()):
            user = self.g.nodes[j]
            if user.op_type == "Add" and bias is None:
                bias = next((x for x in user.input if x in self.g.inits and len(self.g.inits[x].shape) == 1), None)
        if bias:
            self.names[hf + ".bias"] = (bias, AS_HF)
        return node.output[0]

    def _next_weighted(self, x: str, what: str) -> int:
        return self.g.first(x, lambda n, s: self.g.weight(n) is not None, lambda n: True, what, self.path)[0]

    def _residual(self, x: str, what: str) -> str:
        """The residual sum after `x`: an Add of two computed tensors (its output), or a skip norm that adds `x` in
        (the tensor entering it, from which _norm finds that norm)."""
        i, slot = self.g.first(x, lambda n, s: (n.op_type in SKIP_NORMS and s < 2) or
                               (n.op_type == "Add" and all(self.g.computed(y) for y in n.input)),
                               self._not_weighted, what, self.path)
        node = self.g.nodes[i]
        return node.input[slot] if node.op_type in SKIP_NORMS else node.output[0]

    def _attention(self, x: str, prefix: str) -> str:
        roles, context = {}, None
        for i in self._projections(x):
            out = self.g.nodes[i].output[0]
            hits = self.g.reach(out, lambda n, s: self.g.attention_use(n, s) is not None, self._not_weighted)
            if not hits and self.d.parallel:  # the MLP's projection, fed by the same norm
                continue
            if len(set(self.d.qkv)) == 1:  # one fused projection: q, k and v all come from it
                return self._fused_attention(i, hits, prefix)
            if self._packed(hits):
                return self._packed_attention(i, hits, prefix)
            j, slot = self.g.first(out, lambda n, s: self.g.attention_use(n, s) is not None, self._not_weighted,
                                   f"attention input of {prefix}", self.path)
            use = self.g.attention_use(self.g.nodes[j], slot)
            role = ATTENTION_SLOTS.get((use, slot))
            if role is None or role in roles:
                raise Unsupported(self.path, f"ONNX graph: cannot tell q/k/v apart in {prefix}")
            roles[role] = i
            if role in QK_NORMS:  # a per-head norm between the projection and attention (qwen3)
                hits = self.g.reach(out, lambda n, s: self.g.norm_scale(n) is not None,
                                    lambda n: self._not_weighted(n) and self.g.attention_use(n, 0) is None)
                if hits:
                    self.names[f"{prefix}.{QK_NORMS[role]}.weight"] = (self.g.norm_scale(self.g.nodes[hits[0][0]]),
                                                                       NORM)
            if use != "scores":
                context = self.g.nodes[j].output[0]
        if set(roles) != {"q_proj", "k_proj", "v_proj"} or context is None:
            raise Unsupported(self.path, f"ONNX graph: expected q, k and v projections in {prefix}, found "
                                         f"{sorted(roles) or 'none'} (fused QKV is not read back)")
        for role, i in roles.items():
            self._linear(i, f"{prefix}.{role}")
        return self._linear(self._next_weighted(context, f"o_proj of {prefix}"), f"{prefix}.{self.d.attention[1]}")

    def _packed(self, hits: list[tuple[int, int]]) -> bool:
        """One projection for q, k and v of a family whose checkpoint has three: it enters one fused attention op at
        q, k and v (through a Split), or at q alone with k and v left empty (packed, onnxruntime-genai's)."""
        nodes = {j for j, _ in hits}
        if len(nodes) != 1 or self.g.nodes[hits[0][0]].op_type not in FUSED_ATTENTION:
            return False
        node, slots = self.g.nodes[hits[0][0]], {slot for _, slot in hits}
        return slots == {0, 1, 2} or (slots == {0} and len(node.input) > 2 and not node.input[1] and
                                      not node.input[2])

    def _packed_attention(self, i: int, hits: list[tuple[int, int]], prefix: str) -> str:
        """q, k and v as row ranges of the packed weight (and bias): num_heads, then kv_num_heads twice, heads of
        equal size; qwen3's per-head norms told by the slot they reach."""
        attention = self.g.nodes[hits[0][0]]
        attrs = {a.name: a.i for a in attention.attribute}
        heads, kv = attrs.get("num_heads", 0), attrs.get("kv_num_heads") or attrs.get("num_heads", 0)
        packed = f"{prefix}.qkv"
        self._linear(i, packed)
        init, layout = self.names[packed + ".weight"]
        rows = _hf_ref(self.g, init, layout, self.path).shape[0]
        if not heads or rows % (heads + 2 * kv):
            raise Unsupported(self.path, f"ONNX graph: the packed projection of {prefix} ({rows} rows) is not "
                                         f"{heads} query and 2 x {kv} key/value heads of one size")
        size = rows // (heads + 2 * kv)
        bounds = np.cumsum([0, heads * size, kv * size, kv * size])
        for kind in (".weight", ".bias"):
            if packed + kind in self.names:
                whole = self.names.pop(packed + kind)
                for role, start, stop in zip(PACKED, bounds, bounds[1:]):
                    self.names[f"{prefix}.{role}{kind}"] = whole
                    self.parts[f"{prefix}.{role}{kind}"] = (int(start), int(stop))
        out = self.g.nodes[i].output[0]
        for j, _ in self.g.reach(out, lambda n, s: self.g.norm_scale(n) is not None,
                                 lambda n: self._not_weighted(n) and n.op_type not in FUSED_ATTENTION):
            norm = self.g.nodes[j]
            slots = [s for k, s in self.g.reach(norm.output[0], lambda n, s: n.op_type in FUSED_ATTENTION,
                                                self._not_weighted) if k == hits[0][0]]
            role = PACKED[slots[0]] if slots and slots[0] < len(PACKED) else None
            if role in QK_NORMS:
                self.names[f"{prefix}.{QK_NORMS[role]}.weight"] = (self.g.norm_scale(norm), NORM)
        for slot, norm in FUSED_QK_NORMS.get(attention.op_type, {}).items():  # the op's own per-head norms
            if len(attention.input) > slot and attention.input[slot] in self.g.inits:
                self.names[f"{prefix}.{norm}.weight"] = (attention.input[slot], NORM)
        return self._linear(self._next_weighted(attention.output[0], f"o_proj of {prefix}"),
                            f"{prefix}.{self.d.attention[1]}")

    def _fused_attention(self, i: int, hits: list[tuple[int, int]], prefix: str) -> str:
        """The one projection whose output is q, k and v (falcon's query_key_value; phi3's qkv_proj, which
        onnxruntime-genai's builder hands its attention op packed, in the same row order), and the output projection
        after the context product."""
        if self._packed(hits):
            if self.d.qkv_grouped:  # the builder packs all queries, then keys, then values
                raise Unsupported(self.path, f"ONNX graph: the packed projection of {prefix} is not in the grouped "
                                             f"row order of {self.d.qkv[0]}")
            self._linear(i, f"{prefix}.{self.d.qkv[0]}")
            return self._linear(self._next_weighted(self.g.nodes[hits[0][0]].output[0], f"o_proj of {prefix}"),
                                f"{prefix}.{self.d.attention[1]}")
        uses = {ATTENTION_SLOTS.get((self.g.attention_use(self.g.nodes[j], slot), slot)): j for j, slot in hits}
        if not {"q_proj", "k_proj", "v_proj"} <= set(uses):
            raise Unsupported(self.path, f"ONNX graph: the fused projection of {prefix} does not reach attention's "
                                         f"q, k and v")
        self._linear(i, f"{prefix}.{self.d.qkv[0]}")
        context = self.g.nodes[uses["v_proj"]].output[0]
        return self._linear(self._next_weighted(context, f"{self.d.attention[1]} of {prefix}"),
                            f"{prefix}.{self.d.attention[1]}")

    def _mlp(self, x: str, prefix: str) -> str:
        """gate (the projection that reaches an activation), up, down; without a gate (falcon's), up is the one that
        reaches the activation (a parallel block's attention projections, fed by the same norm, do not)."""
        gate_name, up_name, down_name = self.d.mlp
        found = self._projections(x)
        gates = [i for i in found if self._reaches(i, ACTIVATIONS)]
        ups = gates if gate_name is None else [i for i in found if i not in gates]
        if gate_name == up_name and len(found) == 1 and gates == found:  # phi3's gate_up_proj, one product
            up = self._linear(found[0], f"{prefix}.{up_name}")
            return self._linear(self._next_weighted(up, f"{down_name} of {prefix}"), f"{prefix}.{down_name}")
        if len(gates) != 1 or len(ups) != 1:
            raise Unsupported(self.path, f"ONNX graph: expected a{' gated' if gate_name else 'n'} MLP "
                                         f"({', '.join(n for n in self.d.mlp if n)}) in {prefix}")
        if gate_name == up_name:  # gate_up_proj as two products (onnxruntime-genai's): its rows joined, gate first
            up = self._linear(ups[0], f"{prefix}.{up_name}.up")
            self._linear(gates[0], f"{prefix}.{gate_name}")
            for kind in (".weight", ".bias"):
                if f"{prefix}.{up_name}.up{kind}" in self.names:
                    self.joined[f"{prefix}.{up_name}{kind}"] = self.names.pop(f"{prefix}.{up_name}.up{kind}")
            return self._linear(self._next_weighted(up, f"{down_name} of {prefix}"), f"{prefix}.{down_name}")
        if gate_name:
            self._linear(gates[0], f"{prefix}.{gate_name}")
        up = self._linear(ups[0], f"{prefix}.{up_name}")
        return self._linear(self._next_weighted(up, f"{down_name} of {prefix}"), f"{prefix}.{down_name}")

    def _reaches(self, i: int, ops: set[str]) -> bool:
        """Whether weighted node i's output reaches one of `ops` before any other weight."""
        return bool(self.g.reach(self.g.nodes[i].output[0], lambda n, s: n.op_type in ops, self._not_weighted))

    def _experts(self, x: str, prefix: str, count: int) -> None:
        """A routed mixture of experts on `x`: the router is the projection of `x` whose logits reach TopK, each
        expert the gated MLP on rows Gathered from `x` (gate and up share that input). They are numbered in the
        order the exporter unrolled its loop over range(num_experts) (optimum's patched MoE blocks); every one must
        be there."""
        e = self.d.experts
        found = [i for i, _ in self.g.reach(x, lambda n, s: self.g.weight(n) is not None,
                                            lambda n: n.op_type in LAYOUT_OPS | {"Gather"})]
        routers = [i for i in found if self._reaches(i, {"TopK"})]
        inputs: dict[str, list[int]] = {}
        for i in found:
            if i not in routers:
                inputs.setdefault(self.g.nodes[i].input[0], []).append(i)
        if len(routers) != 1 or len(inputs) != count:
            raise Unsupported(self.path, f"ONNX graph: expected a router and {count} experts in {prefix}, found "
                                         f"{len(routers)} and {len(inputs)}")
        self._linear(routers[0], f"{prefix}.{e.router}")
        for xid, pair in enumerate(sorted(inputs.values(), key=min)):
            gate, up, down = (f"{prefix}.{name.format(xid=xid)}" for name in e.expert)
            gates = [i for i in pair if self._reaches(i, ACTIVATIONS)]
            if len(pair) != 2 or len(gates) != 1:
                raise Unsupported(self.path, f"ONNX graph: expected a gated MLP for expert {xid} of {prefix}")
            self._linear(gates[0], gate)
            out = self._linear(next(i for i in pair if i not in gates), up)
            self._linear(self._next_weighted(out, f"down projection of expert {xid} of {prefix}"), down)

    def _skip(self, h: str, what: str) -> str:
        """The residual sum that the block's input `h` feeds directly (through casts): where a branch whose output
        the walk does not follow (the experts' scattered sum) joins the stream."""
        i, _ = self.g.first(h, lambda n, s: n.op_type == "Add" and all(self.g.computed(y) for y in n.input),
                            lambda n: n.op_type in ("Cast", "Identity"), what, self.path)
        return self.g.nodes[i].output[0]

    def run(self, cfg: dict) -> dict[str, tuple[str, str]]:
        """The names along the block the family's Decoder row says for the normalised config: its norms before and
        after attention and the MLP (gemma2's and gemma3's post norms), its tensor names, a parallel block
        (falcon's), routed experts in place of the MLP."""
        attn_in, attn_out, mlp_in, mlp_out = self.d.norms(cfg)
        d = self.d
        hits = [(i, table) for i, slot in self.g.consumers.get("input_ids", ())
                if slot == 1 and (table := self.g.table(self.g.nodes[i]))]
        if not hits:
            raise Unsupported(self.path, "ONNX graph: no embedding (a Gather of an initializer by input_ids)")
        self.names[f"{d.embed}.weight"] = hits[0][1]
        h = self.g.nodes[hits[0][0]].output[0]
        for b in range(cfg["num_hidden_layers"]):
            prefix = f"{d.layers}.{b}"
            if d.parallel:  # x + (mlp + attn): both read the block's input, through one norm or two
                normed = self._norm(h, f"{prefix}.{attn_in}.weight")
                self._attention(normed, f"{prefix}.{d.attention[0]}")
                mlp_x = self._norm(h, f"{prefix}.{mlp_in}.weight", second=True) if mlp_in else normed
                mlp = self._mlp(mlp_x, f"{prefix}.{d.mlp_module}")
                h = self._residual(self._residual(mlp, f"attention and MLP sum of {prefix}"),
                                   f"residual after {prefix}")
                continue
            attn = self._attention(self._norm(h, f"{prefix}.{attn_in}.weight"), f"{prefix}.{d.attention[0]}")
            if attn_out:
                attn = self._norm(attn, f"{prefix}.{attn_out}.weight")
            h = self._residual(attn, f"residual after attention of {prefix}")
            if d.experts:
                self._experts(self._norm(h, f"{prefix}.{mlp_in}.weight"), prefix, d.experts.count(cfg))
                h = self._skip(h, f"residual after the experts of {prefix}")
                continue
            mlp = self._mlp(self._norm(h, f"{prefix}.{mlp_in}.weight"), f"{prefix}.{d.mlp_module}")
            if mlp_out:
                mlp = self._norm(mlp, f"{prefix}.{mlp_out}.weight")
            h = self._residual(mlp, f"residual after the MLP of {prefix}")
        head = self._projections(self._norm(h, f"{d.final_norm}.weight"))
        if len(head) != 1:
            raise Unsupported(self.path, "ONNX graph: no single lm_head product after the final norm")
        self._linear(head[0], "lm_head")
        return self.names


def _hf_ref(graph: _Graph, name: str, layout: str, path: Path) -> TensorRef:
    """An initializer as HF lays the tensor out, lazily."""
    ref = graph.inits[name]
    if layout == NBITS:
        return _nbits(graph, name, path)
    if layout in DEQUANTIZED:
        ref, layout = _dequantized(graph, name, path), DEQUANTIZED[layout]
    return ref.map(np.transpose, shape=ref.shape[::-1]) if layout == TRANSPOSED else ref


def _dequantized(graph: _Graph, name: str, path: Path) -> TensorRef:
    """The float32 values DequantizeLinear makes of initializer `name` (with its node's scales, zero points, axis
    and block size), computed when read."""
    x = graph.inits[name]
    node = next((graph.nodes[i] for i, slot in graph.consumers.get(name, ())
                 if graph.nodes[i].op_type == "DequantizeLinear" and slot == 0), None)
    if node is None:
        raise BadInput(path, f"initializer {name} feeds no DequantizeLinear node")
    attrs = {a.name: a.i for a in node.attribute}
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    scales = graph.inits.get(node.input[1])
    zero_points = graph.inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    want = tuple(-(-d // block) if i == axis % max(1, len(x.shape)) else d for i, d in enumerate(x.shape)) \
        if block else None
    if scales is None or x.dtype not in qdq.INT_TYPES.values() or (block and scales.shape != want) or \
            (zero_points is not None and zero_points.shape != scales.shape):
        raise BadInput(path, f"DequantizeLinear weight {name} {list(x.shape)} {x.dtype}: scales or zero points "
                             f"missing or not of its blocks' shape {list(want or ())}")

    def dequantize(raw: np.ndarray) -> np.ndarray:
        zp = None if zero_points is None else qdq.int_values(zero_points.read(), zero_points.dtype,
                                                             zero_points.shape)
        return qdq.dequantize(qdq.int_values(raw, x.dtype, x.shape), cast(scales, "F32").read(), zp, axis, block)

    return x.map(dequantize, dtype="F32")


def _nbits(graph: _Graph, name: str, path: Path) -> TensorRef:
    """The float [N, K] weight of MatMulNBits blobs `name` (with the node's scales and zero points), dequantized
    when read."""
    qweight = graph.inits[name]
    node = next((graph.nodes[i] for i, _ in graph.consumers.get(name, ())
                 if graph.nodes[i].op_type == "MatMulNBits"), None)
    if node is None:
        return _expert_nbits(graph, name, path)
    attrs = {a.name: a.i for a in node.attribute}
    k, n, bits, block = attrs.get("K"), attrs.get("N"), attrs.get("bits", 4), attrs.get("block_size")
    scales = graph.inits.get(node.input[2])
    zero_points = graph.inits.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    return _nbits_ref(qweight, scales, zero_points, k, n, bits, block, name, path)


def _expert_nbits(graph: _Graph, name: str, path: Path) -> TensorRef:
    """An expert's MatMulNBits blobs that our graph stacks for a QMoE node (convert/onnx/moe.py): bits and block
    size are the node's, K whole blocks, scales and zero points named as the contract says."""
    hits = graph.reach(name, lambda n, s: n.op_type == "QMoE", lambda n: n.op_type in LAYOUT_OPS | {"Concat"})
    if not hits:
        raise BadInput(path, f"initializer {name} feeds no MatMulNBits or QMoE node")
    attrs = {a.name: a.i for a in graph.nodes[hits[0][0]].attribute}
    bits, block, qweight = attrs.get("expert_weight_bits", 4), attrs.get("block_size"), graph.inits[name]
    base = name.removesuffix(QWEIGHT)
    return _nbits_ref(qweight, graph.inits.get(f"{base}.scales"), graph.inits.get(f"{base}.zero_points"),
                      qweight.shape[1] * (block or 0) if len(qweight.shape) == 3 else None, qweight.shape[0], bits,
                      block, name, path)


def _nbits_ref(qweight: TensorRef, scales: TensorRef | None, zero_points: TensorRef | None, k: int | None, n: int,
               bits: int, block: int | None, name: str, path: Path) -> TensorRef:
    """The float [N, K] weight of MatMulNBits blobs, dequantized when read."""
    if not k or not n or bits not in (2, 4, 8) or not block or \
            qweight.shape != (n, -(-k // block), block * bits // 8) or qweight.dtype != "U8":
        raise BadInput(path, f"MatMulNBits weight {name} {list(qweight.shape)} does not match its node's "
                             f"K={k} N={n} bits={bits} block_size={block}")
    if scales is None or scales.n_elements != n * qweight.shape[1]:
        raise BadInput(path, f"MatMulNBits weight {name}: scales missing or not {n * qweight.shape[1]} values")

    def dequantize(q: np.ndarray) -> np.ndarray:  # float32: exact for F32/F16/BF16 scales times small integers
        zp = None if zero_points is None else \
            zero_points.read() if zero_points.dtype == "U8" else cast(zero_points, "F32").read()
        return _dequantize(q, cast(scales, "F32").read(), zp, k, n, bits, block)

    return qweight.map(dequantize, shape=(n, k), dtype="F32")


def _own_tensors(graph: _Graph, hf_names: set[str], conv1d: bool, path: Path) -> dict[str, TensorRef]:
    """Our graphs: initializers named as the HF tensors, MatMulNBits groups dequantized. A float tensor wins over
    blobs of the same name: a tied embedding quantized for its lm_head product only is still stored whole for its
    Gather, and the HF checkpoint holds that one tensor. Quantized weights are [N, K] (MatMulNBits) or [K, N]
    (DequantizeLinear); a Conv1D family's HF layout is [K, N] (`conv1d`), its embedding's (a GatherBlockQuantized
    table) [N, K]. In the initializers' order."""
    floats = {name for name in graph.inits if name in hf_names}
    tables = {graph.table(n) for n in graph.nodes}
    tensors = {}
    for name in graph.inits:
        if name in floats:
            tensors[name] = graph.inits[name]
        elif name.endswith(QWEIGHT) and name.removesuffix(QWEIGHT) in hf_names - floats:
            ref = _nbits(graph, name, path)
            transpose = conv1d and (name, NBITS) not in tables
            tensors[name.removesuffix(QWEIGHT)] = ref.map(np.transpose, shape=ref.shape[::-1]) if transpose else ref
        elif name.endswith(QUANTIZED) and name.removesuffix(QUANTIZED) in hf_names - floats:
            tensors[name.removesuffix(QUANTIZED)] = _hf_ref(graph, name, "qdq-hf" if conv1d else "qdq-transposed",
                                                            path)
    return tensors


def _exported_tensors(graph: _Graph, arch: archs.Arch, cfg: dict, hf_names: set[str], path: Path
                       ) -> dict[str, TensorRef]:
    if not arch.onnx.read_back:
        walked = sorted(a.name for a in archs.registry().values() if a.onnx.read_back)
        raise Unsupported(path, f"reading an exported {arch.name} ONNX model back is not supported; the graph walk "
                                f"knows {', '.join(walked)}")
    moe = arch.onnx.decoder.experts
    if moe and not moe.every_layer(cfg):
        raise Unsupported(path, f"reading back an exported {arch.name} ONNX model with dense MLP layers between its "
                                "expert layers is not supported; the graph walk knows experts in every layer")
    walk = _Walk(graph, path, arch.onnx.decoder)
    names = walk.run(cfg)
    # the HF checkpoint stores a tied weight once, as the embedding; a family without an lm_head (gemma's, whose
    # config.json leaves its tie_word_embeddings default out) has the exporter's copy of the embedding as its head
    if cfg.get("tie_word_embeddings", False) or "lm_head.weight" not in hf_names:
        names.pop("lm_head.weight", None)
    offset = arch.onnx.decoder.norm_offset
    tensors = {hf: _norm_ref(graph.inits[init], offset) if layout == NORM else
               _rows(_hf_ref(graph, init, layout, path), walk.parts.get(hf)) for hf, (init, layout) in names.items()}
    for hf, (init, layout) in walk.joined.items():
        tensors[hf] = _joined(tensors[hf], _hf_ref(graph, init, layout, path))
    return tensors


def _joined(first: TensorRef, second: TensorRef) -> TensorRef:
    """The rows of `first`, then those of `second` (phi3's gate_up_proj from its two products), made when read."""
    return first.map(lambda a: np.concatenate([a, second.read()]), shape=(first.shape[0] + second.shape[0],)
                     + first.shape[1:])


def _rows(ref: TensorRef, part: tuple[int, int] | None) -> TensorRef:
    """Rows start:stop of an HF-laid tensor (q, k or v of a packed projection), lazily; all of it without a part."""
    if part is None:
        return ref
    start, stop = part
    return ref.map(lambda a: a[start:stop], shape=(stop - start,) + ref.shape[1:])


def _norm_ref(ref: TensorRef, offset: float) -> TensorRef:
    """w from a norm's scale: an exporter folds gemma's (1 + w) into one initializer; (1 + w) - 1 in float32 is w to
    within half an ulp of 1 + w (as through GGUF), exact for BF16/F16 weights."""
    if not offset:
        return ref
    return ref.map(lambda a: (a.astype(np.float32) - np.float32(offset)).astype(a.dtype))


def _config(contents: OnnxContents, folder: Path, graph: _Graph, path: Path) -> tuple[object, bool]:
    """The source config: recorded in our graphs' metadata, config.json beside the model, or rebuilt from
    onnxruntime-genai's genai_config.json and the graph (then True)."""
    if CONFIG_KEY in contents.metadata:
        return jsonfile.loads(contents.metadata[CONFIG_KEY], contents.path, f"metadata {CONFIG_KEY}"), False
    if os.path.lexists(folder / "config.json"):
        return jsonfile.load(folder / "config.json", folder), False
    genai = genai_config.load(folder)
    if genai is None:  # a well-formed model we cannot map: whose config is not said
        raise Unsupported(contents.path, "no config.json (or genai_config.json) beside the model and none recorded "
                                         "in its metadata; modelport needs the Hugging Face config to read ONNX back")
    return _genai_config(genai, graph, folder, path), True


def _genai_config(genai: dict, graph: _Graph, folder: Path, path: Path) -> dict:
    """config.json rebuilt for an onnxruntime-genai builder's folder: genai_config.json's fields, then a walk of the
    graph for what only the graph says (the MLP width, whether the embedding is the LM head's)."""
    arch = genai_config.family(genai, folder / genai_config.FILE)
    cfg = genai_config.partial(genai, arch, folder)
    d = arch.onnx.decoder
    names = _Walk(graph, path, d).run(cfg)
    down = names[f"{d.layers}.0.{d.mlp_module}.{d.mlp[2]}.weight"]  # [hidden, intermediate] as HF lays it
    tied = names[f"{d.embed}.weight"] == names.get("lm_head.weight")
    return genai_config.rebuilt(genai, cfg, _hf_ref(graph, *down, path).shape[1], tied, graph.nodes, graph.inits,
                                path)


def from_onnx(contents: OnnxContents, path: Path) -> Model:
    """The pivot from an ONNX model's native view; weights stay lazy (transposes and dequantization on read)."""
    folder = contents.path.parent
    graph = _Graph.of(contents)
    cfg, rebuilt = _config(contents, folder, graph, path)
    if not isinstance(cfg, dict):
        raise BadInput(contents.path, "its config is not a JSON object")
    arch = archs.for_hf(cfg.get("model_type", ""), path)
    norm = dims.normalized(arch, cfg, path)
    hf_names = set(arch.name_map(norm["num_hidden_layers"], norm)) | set(experts.per_expert(arch, norm))
    own = CONFIG_KEY in contents.metadata
    if own:  # in the graph's order, the source's
        tensors = _own_tensors(graph, hf_names, arch.onnx.decoder.conv1d, path)
    else:  # in save_pretrained's order
        tensors = dict(sorted(_exported_tensors(graph, arch, norm, hf_names, path).items()))
    unknown = sorted(set(tensors) - hf_names)
    if unknown:
        raise Unsupported(path, f"tensor {unknown[0]!r} has no place in the {arch.name} family")
    # a builder folder's graph may fold a weight where the walk does not look (ops the builder grows): one missing is
    # refused, not left for transformers to initialise (biases aside: the builder drops all-zero ones)
    missing = sorted(n for n in hf_names - set(tensors) if not n.endswith(".bias") and n != "lm_head.weight")
    if rebuilt and missing:
        raise Unsupported(path, f"ONNX graph: no {missing[0]} found in onnxruntime-genai's graph")
    first = next((r for r in tensors.values() if len(r.shape) > 1), None)
    config_file = [] if own or not (folder / "config.json").is_file() else [folder / "config.json"]
    config_file += [folder / genai_config.FILE] if rebuilt else []
    gen = folder / "generation_config.json"
    return Model(arch=arch.name, config=cfg, tensors=tensors,
                 tokenizer=inputs.side_files(folder, TOKENIZER_FILES),
                 generation_config=jsonfile.load(gen, folder) if os.path.lexists(gen) else None,
                 metadata={"format": "onnx", "source_files": contents.files + config_file,
                           "dtype": first.result_dtype if first is not None and first.result_dtype in FLOATS
                           else None,
                           # an encoder's sentence-transformers files, which its graph's metadata carries (checked)
                           "sentence_transformers": sentence_transformers.carried(contents.metadata),
                           # keys for the output's provenance: where its config.json came from
                           "provenance": {CONFIG_REBUILT: genai_config.FILE} if rebuilt else {}})
