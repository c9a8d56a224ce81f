"""The sparse mixture-of-experts block of the graph builder (convert/onnx/graph.py), as the family's `Experts` row
(convert/archs/base.py) describes it. Every expert keeps its own HF tensors as initializers (so ONNX -> HF gives them
back as they were); what an operator wants stacked is stacked inside the graph, from constants onnxruntime folds at
load.

- portable (and qdq): router Gemm -> Softmax (float32) -> TopK -> renormalised where the family says ->
  ScatterElements into a [rows, experts] weight matrix; every expert computed densely, each output times its column,
  summed. Unselected experts weigh exactly 0, so the sum is transformers' over the chosen ones.
- ort: onnxruntime's com.microsoft MoE (float) or QMoE (int4) on the router logits; the op applies the softmax,
  top-k and renormalisation itself. What onnxruntime 1.32's CPU kernels do (one-node graphs against numpy): separate
  fc1 (gate) / fc3 (up) fail ("FC3 is not implemented for CPU MoE") and the concatenated fusion (swiglu_fusion=2) is
  refused at load, so gate and up go in as one fc1 with their rows interleaved (swiglu_fusion=1, activation_alpha 1,
  beta 0: silu(gate) * up), to 1e-6. QMoE renormalises even with normalize_routing_weights=0 (off by 0.7; exact
  against the renormalised sum), so a family that does not renormalise (qwen2_moe) gets the renormalised output
  times the sum of its top-k probabilities, MoE and QMoE alike. QMoE 4-bit computes the MatMulNBits grid exactly
  (with or without zero points), 8-bit does not (max |diff| 0.3 against the dequantized experts): int8 with --ops
  ort is refused. Each quantized expert is MatMulNBits' own blobs (`X.weight.qweight`, `.scales`, `.zero_points`:
  the bytes of onnxruntime's quantizer), reshaped in the graph to QMoE's [N, K/pack].
"""
from __future__ import annotations

import numpy as np

from modelport.formats.errors import Unsupported

from modelport.convert.onnx import nbits as nbits_codec

MS = "com.microsoft"
QMOE_BITS = (4,)  # what onnxruntime 1.32's CPU QMoE computes as MatMulNBits does (module docstring)


def block(d, x: str, prefix: str) -> str:
    """The MoE block of layer `prefix` on the normed hidden rows `x` (d: graph.DecoderBuilder)."""
    e, cfg = d.knobs.experts, d.cfg
    if not e.every_layer(cfg):
        raise Unsupported(None, f"{d.model.arch} with dense MLP layers among the sparse ones (mlp_only_layers / "
                                "decoder_sparse_step): the ONNX builder makes every layer a mixture of experts")
    names = [[f"{prefix}.{p.format(xid=i)}" for p in e.expert] for i in range(e.count(cfg))]
    router = d.n("Gemm", x, d.weight(f"{prefix}.{e.router}.weight"), transB=1)  # [rows, experts]
    out = _ort(d, x, router, names) if d.ops == "ort" else _dense(d, x, router, names)
    if e.shared:
        shared = _gated(d, x, [f"{prefix}.{p}" for p in e.shared])
        gate = d.n("Sigmoid", d.n("Gemm", x, d.weight(f"{prefix}.{e.shared_gate}.weight"), transB=1))
        out = d.n("Add", out, d.n("Mul", shared, gate))
    return out


def _gated(d, x: str, names: list[str]) -> str:
    gate, up, down = names
    return d.linear(d.n("Mul", d.activation(d.linear(x, gate)), d.linear(x, up)), down)


def _dense(d, x: str, router: str, names: list[list[str]]) -> str:
    """Standard operators: the routing weights as a dense [rows, experts] matrix, every expert weighted by its
    column (float32 routing, as transformers' softmax(dtype=float))."""
    e = d.knobs.experts
    probs = d.n("Softmax", d.to_f32(router), axis=-1)
    top, chosen = d.n("TopK", probs, d.i64([e.top_k(d.cfg)]), axis=-1, outputs=2)
    if e.renormalize(d.cfg):
        top = d.n("Div", top, d.n("ReduceSum", top, d.i64([-1]), keepdims=1))
    zeros = d.n("ConstantOfShape", d.n("Shape", probs), value=d.n.onnx.numpy_helper.from_array(np.zeros(1, np.float32)))
    weights = d.to_compute(d.n("ScatterElements", zeros, chosen, top, axis=1))
    outs = [d.n("Mul", _gated(d, x, expert), d.n("Slice", weights, d.i64([i]), d.i64([i + 1]), d.i64([1])))
            for i, expert in enumerate(names)]
    return d.n("Sum", *outs)


def _ort(d, x: str, router: str, names: list[list[str]]) -> str:
    """onnxruntime's MoE / QMoE: fc1 = the experts' gate and up rows interleaved [E, 2I, H], fc2 = downs
    [E, H, I], built in the graph from each expert's own initializers."""
    e = d.knobs.experts
    if d.knobs.activation(d.cfg) != "silu":
        raise Unsupported(None, f"{d.model.arch} experts with {d.knobs.activation(d.cfg)!r} and --ops ort: "
                                "onnxruntime's MoE gates with silu only (swiglu); --ops portable computes it")
    attrs = dict(domain=MS, k=e.top_k(d.cfg), activation_type="swiglu", swiglu_fusion=1, activation_alpha=1.0,
                 activation_beta=0.0, normalize_routing_weights=1)
    out = _ort_op(d, x, router, names, attrs)
    if e.renormalize(d.cfg):
        return out
    # the op renormalises (QMoE on the CPU EP whatever its attribute says): times the top-k probabilities' sum
    top = d.n("TopK", d.n("Softmax", d.to_f32(router), axis=-1), d.i64([e.top_k(d.cfg)]), axis=-1, outputs=2)[0]
    return d.n("Mul", out, d.to_compute(d.n("ReduceSum", top, d.i64([-1]), keepdims=1)))


def _ort_op(d, x: str, router: str, names: list[list[str]], attrs: dict) -> str:
    """MoE on float experts; QMoE where every expert weight has one QMoE form. Experts of a quantized GGUF without
    one (8-bit or float zero point grids) are dequantized for MoE and noted; --quant asking for one is refused."""
    quantized = [[d.nbits(f"{n}.weight") for n in expert] for expert in names]
    flat = [(f"{n}.weight", q) for expert, qs in zip(names, quantized) for n, q in zip(expert, qs)]
    misfit = _misfit(flat) if any(q is not None for _, q in flat) else None
    if misfit and d.quant:
        raise Unsupported(None, f"{misfit} with --ops ort: onnxruntime 1.32's CPU QMoE computes the MatMulNBits grid "
                                f"for {'/'.join(f'int{b}' for b in QMOE_BITS)} only, in whole blocks with uint8 zero "
                                "points; --ops qdq quantizes experts with standard operators")
    if misfit:
        d.notes.append({"name": names[0][0].rsplit(".", 2)[0], "fallback": f"{misfit}: onnxruntime's QMoE has no "
                        "such form, so the layer's experts are dequantized for its float MoE"})
    if misfit or all(q is None for _, q in flat):
        fc1 = _interleaved(d, [[d.weight(f"{g}.weight"), d.weight(f"{u}.weight")] for g, u, _ in names],
                           d.cfg["hidden_size"])
        fc2 = _stacked(d, [d.weight(f"{down}.weight") for _, _, down in names])
        return d.n("MoE", x, router, fc1, "", fc2, "", **attrs)
    blobs = [[_qmoe_parts(d, f"{n}.weight", q) for n, q in zip(expert, qs)] for expert, qs in zip(names, quantized)]
    inputs = []
    for part in range(3):  # qweight, scales, zero points: (name, columns)
        if blobs[0][0][part] is None:
            inputs.append(["", ""])
            continue
        inputs.append([_interleaved(d, [[b[0][part][0], b[1][part][0]] for b in blobs], blobs[0][0][part][1]),
                       _stacked(d, [b[2][part][0] for b in blobs])])
    (q1, q2), (s1, s2), (z1, z2) = inputs
    first = quantized[0][0]
    return d.n("QMoE", x, router, q1, s1, "", q2, s2, "", "", "", "", z1, z2, "", expert_weight_bits=first.bits,
               block_size=first.block_size, **attrs)


def _misfit(flat: list[tuple[str, nbits_codec.NBits | None]]) -> str | None:
    """What keeps a layer's expert weights from one QMoE node, or None: each must be MatMulNBits blobs of a bit
    width QMoE computes, K in whole blocks, uint8 or no zero points, all alike."""
    for name, q in flat:
        zp = None if q is None or q.zero_points is None else q.zero_points.result_dtype
        if q is None or q.bits not in QMOE_BITS or q.K % q.block_size or zp not in (None, "U8"):
            return f"expert weight {name} (" + ("float" if q is None else f"{q.bits}-bit, K {q.K} in blocks of "
                                                 f"{q.block_size}" + (f", {zp} zero points" if zp else "")) + ")"
    kinds = {(q.bits, q.block_size, q.zero_points is None) for _, q in flat}
    return f"expert weights {flat[0][0]} ... of {len(kinds)} kinds" if len(kinds) > 1 else None


def _qmoe_parts(d, name: str, q: nbits_codec.NBits) -> tuple:
    """One expert weight's MatMulNBits blobs as initializers (`X.weight.qweight` ...), reshaped in the graph to
    QMoE's [N, K/pack], [N, blocks] and [N, packed zero points]: (name, columns) each, None for no zero points."""
    parts = [(f"{name}.{part}", getattr(q, part)) for part in ("qweight", "scales", "zero_points")]
    d.weights.update((n, ref) for n, ref in parts if ref is not None)
    return tuple((d.n("Reshape", n, d.i64([q.N, -1])), ref.n_elements // q.N) if ref is not None else None
                 for n, ref in parts)


def _stacked(d, mats: list[str]) -> str:
    """[E, N, X] from E matrices [N, X]."""
    return d.n("Concat", *(d.n("Unsqueeze", m, d.i64([0])) for m in mats), axis=0)


def _interleaved(d, pairs: list[list[str]], cols: int) -> str:
    """[E, 2N, X] from E (gate, up) pairs of [N, X = cols]: row 2n is gate's n, row 2n + 1 up's (swiglu_fusion=1)."""
    gates, ups = (d.n("Concat", *(d.n("Unsqueeze", pair[j], d.i64([0, 2])) for pair in pairs), axis=0)
                  for j in range(2))
    both = d.n("Concat", gates, ups, axis=2)  # [E, N, 2, X]
    return d.n("Reshape", both, d.i64([len(pairs), -1, cols]))
