"""The graph of a BERT-style encoder (a family whose ONNX section has an `Encoder` row), with its sentence-transformers
pooling: modelport's own export of bert, so that optimum is not needed for it.

A module of its own beside graph.py because an encoder shares none of a decoder's forward (no KV cache, no rope, no
causal mask, post-LayerNorms, one pass over the whole text) but all of its weight plumbing: storage and compute
dtypes, HF-named initializers (so reader.py reads the graph back by name, bit-identical), Gemm / MatMulNBits /
DequantizeLinear linears for `--ops`, `--quant`, LayerNormalization and GELU. The encoder inherits that plumbing from
graph.py's decoder builder and replaces its forward and its inputs and outputs.

Inputs input_ids, attention_mask, token_type_ids (int64 [batch_size, sequence_length]); outputs last_hidden_state
(optimum's name for BertModel's feature-extraction export) and sentence_embedding (optimum's name in its
sentence-transformers export): the states pooled as the folder's sentence-transformers modules say (mean over the
attention mask, [CLS] or last token; mean without modules.json, as sentence-transformers does), L2-normalised where a
Normalize module follows. The --ops ort set is the portable graph with MatMulNBits weights: onnxruntime fuses the
LayerNorms and GELU itself at load.
"""
from __future__ import annotations

import json

import numpy as np

from modelport.formats.errors import BadInput, Unsupported
from modelport.formats.model import Model

from modelport.convert import archs, provenance
from modelport.convert.gguf import sentence_transformers
from modelport.convert.onnx import graph

POOLED = "sentence_embedding"
# sentence-transformers modules the graph computes: the model, its pooling, its normalisation
COMPUTED = ("Transformer", "Pooling", "Normalize")
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's


class _Encoder(graph.DecoderBuilder):
    """The decoder builder's weight plumbing (weight, linear, nbits, layer_norm, gelu ..., which read model,
    storage/compute, ops, quant, knobs.conv1d and the node list set here) under an encoder's forward."""

    def __init__(self, model: Model, dtype: str, compute: str, ops: str, quant: str | None, block_size: int,
                 symmetric: bool = False, accuracy_level: int | None = None):
        arch = archs.for_hf(model.arch)
        self.model = model
        self.ops, self.quant, self.block_size, self.symmetric = ops, quant, block_size, symmetric
        self.accuracy_level, self.lm_head_bits = accuracy_level, None
        self.cfg = c = arch.normalize(model.config)
        self.storage, self.compute = dtype, compute
        self.np_compute = np.float16 if compute == "F16" else np.float32
        self.n = graph.Nodes()
        self.weights, self.casts, self.notes = {}, {}, []
        self.knobs, self.row = arch.onnx.decoder, arch.onnx.encoder  # knobs: the plumbing's (nn.Linear layouts)
        self.eps = float(self.row.norm_eps(c))
        self.heads, self.hidden = c["num_attention_heads"], c["hidden_size"]
        self.head_dim = self.hidden // self.heads
        activation = self.row.activation(c)
        if activation not in graph.ACTIVATIONS:
            raise Unsupported(None, f"{model.arch} with hidden activation {activation!r}: the ONNX encoder builder "
                                    f"knows {', '.join(graph.ACTIVATIONS)}")
        self.activation = getattr(self, graph.ACTIVATIONS[activation])
        self.pooling, self.normalize = pooling(model)

    def build(self) -> graph.OnnxGraph:
        self.batch_seq = self.n("Shape", "input_ids")
        self.rows_last = self.n("Concat", self.batch_seq, self.i64([-1]), axis=0)  # [B, S, -1]
        x = self.n("Reshape", self.embeddings(), self.i64([-1, self.hidden]))
        x = self.layer_norm(x, f"{self.row.embeddings}.LayerNorm.weight")
        mask = self.padding_mask()
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"{self.row.layers}.{i}"
            attn = self.linear(self.attention(x, mask, f"{p}.attention.self"), f"{p}.attention.output.dense")
            x = self.layer_norm(self.n("Add", attn, x), f"{p}.attention.output.LayerNorm.weight")
            ffn = self.linear(self.activation(self.linear(x, f"{p}.intermediate.dense")), f"{p}.output.dense")
            x = self.layer_norm(self.n("Add", ffn, x), f"{p}.output.LayerNorm.weight")
        states = self.n("Reshape", x, self.rows_last, outputs=["last_hidden_state"])
        self.output(self.pool(states), POOLED)
        return graph.OnnxGraph(self.proto(), list(self.weights.items()), self.storage, self.compute, self.notes)

    def embeddings(self) -> str:
        """word + token type + position embeddings [B, S, H], added in BertEmbeddings' order; positions 0..S-1."""
        e = self.row.embeddings
        x = self.n("Gather", self.weight(f"{e}.word_embeddings.weight"), "input_ids", axis=0)
        if self.has(f"{e}.token_type_embeddings.weight"):
            x = self.n("Add", x, self.n("Gather", self.weight(f"{e}.token_type_embeddings.weight"), "token_type_ids",
                                        axis=0))
        seq = self.n("Gather", self.batch_seq, self.i64(1), axis=0)
        positions = self.n("Unsqueeze", self.n("Range", self.i64(0), seq, self.i64(1)), self.i64([0]))
        return self.n("Add", x, self.n("Gather", self.weight(f"{e}.position_embeddings.weight"), positions, axis=0))

    def padding_mask(self) -> str:
        """[B, 1, 1, S] float32 added to the scores: 0 for a token, float32's min for padding (transformers')."""
        keep = self.n("Unsqueeze", self.n("Cast", "attention_mask", to=graph.elem("BOOL")), self.i64([1, 2]))
        return self.n("Where", keep, self.n.const(0.0, np.float32), self.n.const(graph.NEG, np.float32))

    def attention(self, x: str, mask: str, prefix: str) -> str:
        """softmax(q k^T / sqrt(D) + mask) v over all heads, scores and softmax in float32; [B * S, H]."""
        shape = self.n("Concat", self.batch_seq, self.i64([self.heads, self.head_dim]), axis=0)
        q, k, v = (self.n("Transpose", self.n("Reshape", self.linear(x, f"{prefix}.{w}"), shape), perm=perm)
                   for w, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3])))
        scores = self.n("Mul", self.n("MatMul", q, k), self.c(self.head_dim ** -0.5))
        if self.compute != "F32":
            scores = self.n("Cast", scores, to=graph.elem("F32"))
        probs = self.to_compute(self.n("Softmax", self.n("Add", scores, mask), axis=-1))
        out = self.n("Transpose", self.n("MatMul", probs, v), perm=[0, 2, 1, 3])
        return self.n("Reshape", out, self.i64([-1, self.hidden]))

    def pool(self, states: str) -> str:
        """The sentence embedding [B, H] in float32, as sentence-transformers' Pooling (and Normalize) compute it."""
        h = self.n("Cast", states, to=graph.elem("F32")) if self.compute != "F32" else states
        mask = self.n("Cast", "attention_mask", to=graph.elem("F32"))  # [B, S]
        if self.pooling == "mean":
            total = self.n("ReduceSum", self.n("Mul", h, self.n("Unsqueeze", mask, self.i64([-1]))), self.i64([1]),
                           keepdims=0)
            out = self.n("Div", total, self.n("ReduceSum", mask, self.i64([1]), keepdims=1))
        elif self.pooling == "cls":
            out = self.n("Gather", h, self.i64(0), axis=1)
        else:  # lasttoken: the last unpadded token of each (right-padded) row
            last = self.n("Sub", self.n("ReduceSum", "attention_mask", self.i64([1]), keepdims=1), self.i64(1))
            out = self.n("GatherND", h, last, batch_dims=1)
        if self.normalize:
            norm = self.n("Sqrt", self.n("ReduceSum", self.n("Mul", out, out), self.i64([1]), keepdims=1))
            out = self.n("Div", out, self.n("Max", norm, self.n.const(NORMALIZE_EPS, np.float32)))
        return out

    def output(self, x32: str, output: str) -> str:
        """A float32 tensor as graph output `output` in the compute type."""
        if self.compute == "F32":
            return self.n("Identity", x32, outputs=[output])
        return self.n("Cast", x32, to=graph.elem(self.compute), outputs=[output])

    def proto(self):
        onnx = self.n.onnx
        h, tp = onnx.helper, onnx.TensorProto
        dims = ["batch_size", "sequence_length"]
        inputs = [h.make_tensor_value_info(name, tp.INT64, dims)
                  for name in ("input_ids", "attention_mask", "token_type_ids")
                  if name != "token_type_ids" or self.has(f"{self.row.embeddings}.token_type_embeddings.weight")]
        io = graph.elem(self.compute)
        outputs = [h.make_tensor_value_info("last_hidden_state", io, [*dims, self.hidden]),
                   h.make_tensor_value_info(POOLED, io, ["batch_size", self.hidden])]
        opset = graph.OPSETS[self.ops]
        opsets = [h.make_opsetid("", opset)] + ([h.make_opsetid(graph.MS, 1)] if self.ops == "ort" else [])
        return h.make_model(h.make_graph(self.n.nodes, self.model.arch, inputs, outputs), opset_imports=opsets,
                            producer_name="modelport", ir_version=graph.IR_VERSIONS[opset])


def canonical(model: Model) -> Model:
    """`model` with the names the family's row spells (BertForMaskedLM's "bert." prefix, old gamma/beta), less what
    no embedding runs (the pooler, MLM head, a position_ids buffer, which would pass for the source's dtype)."""
    arch = archs.for_hf(model.arch)
    tensors = {arch.canonical(n): r for n, r in model.tensors.items() if arch.canonical(n)}
    return Model(model.arch, model.config, tensors, model.tokenizer, model.generation_config, model.metadata)


def pooling(model: Model) -> tuple[str, bool]:
    """(pooling mode, normalised) from the source's sentence-transformers files; mean and not normalised without
    them. A module the graph does not compute (Dense ...) is refused: its embeddings would be others."""
    files = model.metadata.get("sentence_transformers") or {}
    extra = [m["class"] for m in sentence_transformers.modules(files) if m["class"] not in COMPUTED]
    if extra:
        raise Unsupported("modules.json", f"sentence-transformers module {extra[0]}: the ONNX encoder computes "
                                          f"{', '.join(COMPUTED)} only")
    return sentence_transformers.pooling_mode(files) or "mean", sentence_transformers.normalizes(files)


def build(model: Model, dtype: str | None = None, ops: str = "portable", quant: str | None = None,
          block_size: int = 32, symmetric: bool = False, accuracy_level: int | None = None,
          lm_head_bits: int | None = None) -> graph.OnnxGraph:
    """The encoder graph of `model`, with graph.build's options (an encoder has no LM head to size)."""
    if lm_head_bits:
        raise BadInput(None, f"--lm-head: {model.arch} is an encoder, it has no LM head")
    model = canonical(model)
    dtype, compute = graph.resolve(model, dtype, ops, quant, accuracy_level)
    return _Encoder(model, dtype, compute, ops, quant, block_size, symmetric, accuracy_level).build()


def metadata(model: Model) -> dict[str, str]:
    """The sentence-transformers files, kept in the graph's metadata so that ONNX -> HF writes them back."""
    files = model.metadata.get("sentence_transformers") or {}
    text = json.dumps({n: b.decode("utf-8") for n, b in files.items()}, sort_keys=True)
    return {provenance.SENTENCE_TRANSFORMERS: text} if files else {}


def folder_files(model: Model) -> dict[str, bytes]:
    """config.json and the tokenizer beside the model (no genai_config.json: onnxruntime-genai runs decoders)."""
    config = json.dumps(model.config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return {"config.json": config.encode(), **model.tokenizer}
