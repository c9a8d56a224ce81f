"""Quantized serving checkpoints into the pivot: each quantized module's weight comes back, lazily and one module
at a time, as the float values its kernels compute with (in the scales' dtype, as they compute).

- compressed-tensors (pack-quantized int4/int8, float-quantized FP8, int-/naive-quantized): the library's own
  compressor for the checkpoint's format decompresses it.
- GPTQ (v1 and v2 layouts, with or without act-order g_idx) and AWQ (GEMM layout): unpacked here with numpy, by
  hand, since the libraries that know these layouts (gptqmodel, autoawq) build CUDA kernels and do not install on
  a CPU-only machine. The layouts are those their writers document (see the GPTQ / AWQ tables below).

Every quantization_config is checked against the tensors' shapes before anything is read: bits, group size,
scales and zero points that disagree are BadInput naming the tensor; a method or format not read here is
Unsupported."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from compressed_tensors.compressors.base import BaseCompressor
from compressed_tensors.config import CompressionFormat
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationStrategy
from pydantic import ValidationError

from modelport.formats.errors import BadInput, Unsupported
from modelport.formats.model import Model, TensorRef
from modelport.formats.serving import AWQ, COMPRESSED_TENSORS, GPTQ, ServingContents

from . import lazy

CT_FORMATS = tuple(f.value for f in (CompressionFormat.pack_quantized, CompressionFormat.float_quantized,
                                     CompressionFormat.int_quantized, CompressionFormat.naive_quantized))
# GPTQ checkpoint_format -> what is added to each stored zero point (v1 stores zero - 1, a historical off-by-one)
GPTQ_ZERO_OFFSET = {"gptq": 1, "gptq_v2": 0}
GPTQ_BITS = (2, 4, 8)  # 32 / bits values per int32 word (3-bit words straddle, not read here)
AWQ_VERSIONS = ("gemm",)
SLOT = lazy.OneSlot()  # the module being dequantized
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # AutoAWQ's GEMM packing puts column [0,2,4,6,1,3,5,7][i] in nibble i


@dataclass(frozen=True)
class Module:
    """A quantized module: its weight's shape and dtype, and how to compute it from the stored parts."""

    shape: tuple[int, int]
    dtype: str
    compute: Callable[[], dict[str, torch.Tensor]]


def _tensor(native: Model, name: str) -> torch.Tensor:
    ref = native.tensors[name]
    return lazy.to_torch(ref.read(), ref.dtype).reshape(ref.shape)


def _need(native: Model, path: Path, module: str, parts: tuple[str, ...]) -> None:
    missing = [p for p in parts if f"{module}.{p}" not in native.tensors]
    if missing:
        raise BadInput(path, f"{module}: {', '.join(missing)} missing (the quantization_config needs them)")


def _shape(native: Model, name: str) -> tuple[int, ...]:
    return native.tensors[name].shape


# compressed-tensors --------------------------------------------------------------------------------------------

def _scheme_for(module: str, groups: dict[str, QuantizationScheme]) -> QuantizationScheme:
    """The config group whose targets name this module (regex or exact name), else the one targeting a class."""
    for s in groups.values():
        for t in s.targets:
            if (t.startswith("re:") and re.match(t[3:], module)) or t == module:
                return s
    return next(iter(groups.values()))


def _ct_check(native: Model, path: Path, module: str, sch: QuantizationScheme) -> tuple[int, int]:
    """The weight's (out, in) from weight_shape (pack-quantized) or the stored weight, checked against the
    scheme's bits and group size."""
    w = sch.weights
    if f"{module}.weight_packed" in native.tensors:
        out, cols = (int(v) for v in _tensor(native, f"{module}.weight_shape").tolist())
        packed = _shape(native, f"{module}.weight_packed")
        if packed != (out, math.ceil(cols * w.num_bits / 32)):
            raise BadInput(path, f"{module}.weight_packed: shape {list(packed)} is not {w.num_bits}-bit values of a "
                                 f"[{out}, {cols}] weight (the quantization_config's num_bits disagrees)")
    else:
        out, cols = _shape(native, f"{module}.weight")
    groups = {QuantizationStrategy.GROUP: math.ceil(cols / (w.group_size or cols)),
              QuantizationStrategy.CHANNEL: 1}.get(w.strategy)
    scale = _shape(native, f"{module}.weight_scale")
    if groups is not None and scale[-1] != groups:
        raise BadInput(path, f"{module}.weight_scale: {scale[-1]} scales per row, but group size {w.group_size} "
                             f"over {cols} inputs needs {groups} (the quantization_config disagrees)")
    return out, cols


def _from_ct(native: ServingContents) -> dict[str, Module]:
    q, path = native.qconfig, native.path
    try:
        qc = QuantizationConfig.model_validate({k: v for k, v in q.items() if k in QuantizationConfig.model_fields})
    except (ValidationError, ValueError, KeyError) as e:
        first = str(e).splitlines()
        raise BadInput(path / "config.json", f"quantization_config: {' '.join(first[:3])}") from None
    groups = {k: s for k, s in qc.config_groups.items() if isinstance(s, QuantizationScheme) and s.weights}
    if not groups:
        raise Unsupported(path / "config.json", "quantization_config quantizes no weights")
    modules = {}
    for name in native.model.tensors:
        if not name.endswith((".weight_scale", ".weight_packed")):
            continue
        module = PARTS.split(name)[0]
        if module in modules:
            continue
        sch = _scheme_for(module, groups)
        fmt = sch.format or qc.format
        if fmt not in CT_FORMATS:
            raise Unsupported(path / "config.json", f"compressed-tensors format {fmt!r} is not read here "
                                                    f"(reads {', '.join(CT_FORMATS)})")
        compressor = BaseCompressor.get_value_from_registry(fmt)
        parts = tuple(p for p in compressor.compression_param_names(sch) if p != "input_global_scale")
        _need(native.model, path, module, parts)
        out, cols = _ct_check(native.model, path, module, sch)
        dtype = native.model.tensors[f"{module}.weight_scale"].dtype

        def compute(module=module, sch=sch, compressor=compressor, parts=parts):
            state = {p: _tensor(native.model, f"{module}.{p}") for p in parts}
            try:
                return {"weight": compressor.decompress(state, sch)["weight"]}
            except (ValueError, RuntimeError, AssertionError) as e:
                raise BadInput(path, f"{module}: cannot decompress ({e})") from None

        modules[module] = Module((out, cols), dtype, compute)
    return modules


# GPTQ and AWQ ---------------------------------------------------------------------------------------------------

def _unpack(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """int32 words -> the `32 // bits` unsigned values each holds, lowest bits first, spread along `axis`."""
    u = words.view(np.uint32)
    shifts = np.arange(0, 32, bits, dtype=np.uint32)
    vals = (u[..., None] >> shifts) & np.uint32((1 << bits) - 1)  # [..., values per word]
    if axis == 0:  # GPTQ qweight: rows of words -> rows of values
        return np.moveaxis(vals, -1, 1).reshape(-1, u.shape[1]).astype(np.int32)
    return vals.reshape(u.shape[0], -1).astype(np.int32)


def _qweight_modules(native: ServingContents):
    """(module, its qweight's name) for each GPTQ / AWQ packed module, its qzeros and scales checked present."""
    for name in native.model.tensors:
        if name.endswith(".qweight"):
            module = name.removesuffix(".qweight")
            _need(native.model, native.path, module, ("qzeros", "scales"))
            yield module, name


def _gptq(native: ServingContents) -> dict[str, Module]:
    """GPTQ (AutoGPTQ / GPTQModel): qweight [in*bits/32, out] packed along inputs, qzeros [groups, out*bits/32]
    packed along outputs, scales [groups, out], g_idx [in] (each input's group; act-order permutes it);
    value = scale * (q - (zero + offset))."""
    q, path = native.qconfig, native.path
    bits, group = q.get("bits"), q.get("group_size", -1)
    fmt = q.get("checkpoint_format", "gptq")
    if bits not in GPTQ_BITS:
        raise Unsupported(path / "config.json", f"GPTQ bits {bits!r}: reads {', '.join(map(str, GPTQ_BITS))}")
    if fmt not in GPTQ_ZERO_OFFSET:
        raise Unsupported(path / "config.json", f"GPTQ checkpoint_format {fmt!r}: reads {', '.join(GPTQ_ZERO_OFFSET)}")
    if not isinstance(group, int) or (group != -1 and group <= 0):
        raise BadInput(path / "config.json", f"GPTQ group_size {group!r} is not a positive integer or -1")
    modules = {}
    for module, name in _qweight_modules(native):
        rows, out = _shape(native.model, name)
        cols = rows * 32 // bits
        n_groups = 1 if group == -1 else math.ceil(cols / group)
        scales, zeros = _shape(native.model, f"{module}.scales"), _shape(native.model, f"{module}.qzeros")
        if scales != (n_groups, out):
            raise BadInput(path, f"{module}.scales: shape {list(scales)}, but {bits}-bit qweight {[rows, out]} in "
                                 f"groups of {group} needs {[n_groups, out]} (bits or group_size disagree)")
        if zeros != (n_groups, out * bits // 32):
            raise BadInput(path, f"{module}.qzeros: shape {list(zeros)}, expected {[n_groups, out * bits // 32]} "
                                 f"for {bits}-bit zero points")
        g_idx_name = f"{module}.g_idx"
        if g_idx_name in native.model.tensors and _shape(native.model, g_idx_name) != (cols,):
            raise BadInput(path, f"{g_idx_name}: shape {list(_shape(native.model, g_idx_name))}, expected [{cols}]")
        dtype = native.model.tensors[f"{module}.scales"].dtype

        def compute(module=module, cols=cols, n_groups=n_groups, dtype=dtype):
            t = native.model.tensors
            qw = _unpack(t[f"{module}.qweight"].read(), bits, 0)
            z = _unpack(t[f"{module}.qzeros"].read(), bits, 1) + GPTQ_ZERO_OFFSET[fmt]
            s = lazy.to_torch(t[f"{module}.scales"].read(), dtype).float().numpy()
            g_idx = (t[f"{module}.g_idx"].read().astype(np.int64) if f"{module}.g_idx" in t
                     else np.arange(cols) // (cols if group == -1 else group))
            if g_idx.min() < 0 or g_idx.max() >= n_groups:
                raise BadInput(path, f"{module}.g_idx: group indices outside 0..{n_groups - 1}")
            w = s[g_idx] * (qw - z[g_idx]).astype(np.float32)  # [in, out], exact in f32
            return {"weight": torch.from_numpy(np.ascontiguousarray(w.T)).to(lazy.TORCH[dtype])}

        modules[module] = Module((out, cols), dtype, compute)
    return modules


def _awq(native: ServingContents) -> dict[str, Module]:
    """AWQ GEMM (AutoAWQ): qweight [in, out/8] and qzeros [in/group, out/8] packed along outputs in AWQ's nibble
    order, scales [in/group, out]; value = scale * (q - zero)."""
    q, path = native.qconfig, native.path
    bits, group = q.get("bits", q.get("w_bit")), q.get("group_size", q.get("q_group_size"))
    version = str(q.get("version", "gemm")).lower()
    if version not in AWQ_VERSIONS or bits != 4:
        raise Unsupported(path / "config.json", f"AWQ version {version!r} with {bits!r} bits: reads 4-bit "
                                                f"{', '.join(AWQ_VERSIONS)}")
    if not isinstance(group, int) or group <= 0:
        raise BadInput(path / "config.json", f"AWQ group_size {group!r} is not a positive integer")
    order = np.array(AWQ_REVERSE_ORDER)
    modules = {}
    for module, name in _qweight_modules(native):
        cols, words = _shape(native.model, name)
        out, n_groups = words * 8, math.ceil(cols / group)
        for part, want in (("scales", (n_groups, out)), ("qzeros", (n_groups, words))):
            got = _shape(native.model, f"{module}.{part}")
            if got != want:
                raise BadInput(path, f"{module}.{part}: shape {list(got)}, but qweight {[cols, words]} in groups of "
                                     f"{group} needs {list(want)} (bits or group_size disagree)")
        dtype = native.model.tensors[f"{module}.scales"].dtype

        def unorder(vals: np.ndarray) -> np.ndarray:
            return vals.reshape(vals.shape[0], -1, 8)[..., order].reshape(vals.shape[0], -1)

        def compute(module=module, cols=cols, dtype=dtype):
            t = native.model.tensors
            qw = unorder(_unpack(t[f"{module}.qweight"].read(), 4, 1))
            z = unorder(_unpack(t[f"{module}.qzeros"].read(), 4, 1))
            s = lazy.to_torch(t[f"{module}.scales"].read(), dtype).float().numpy()
            g = np.arange(cols) // group
            w = s[g] * (qw - z[g]).astype(np.float32)
            return {"weight": torch.from_numpy(np.ascontiguousarray(w.T)).to(lazy.TORCH[dtype])}

        modules[module] = Module((out, cols), dtype, compute)
    return modules


READERS = {COMPRESSED_TENSORS: _from_ct, GPTQ: _gptq, AWQ: _awq}
# each method's stored parts, which the pivot replaces with the module's `weight`
PARTS = re.compile(r"\.(weight_packed|weight_scale|weight_shape|weight_zero_point|weight_global_scale|"
                   r"input_global_scale|qweight|qzeros|scales|g_idx)$")


def modules(native: ServingContents) -> dict[str, Module]:
    return READERS[native.method](native)


def to_pivot(native: ServingContents) -> Model:
    """The float model: each quantized module's `weight` computed from its parts (in the order the parts were
    stored), every other tensor as it is; config.json without its quantization_config."""
    quantized = modules(native)
    tensors: dict[str, TensorRef] = {}
    for name, ref in native.model.tensors.items():
        m = PARTS.split(name)[0]
        if m in quantized:
            if f"{m}.weight" not in tensors:
                mod = quantized[m]
                tensors[f"{m}.weight"] = lazy.computed(SLOT, object(), "weight", mod.shape, mod.dtype, mod.compute)
        elif name.endswith(".weight") and name.removesuffix(".weight") in quantized:
            continue  # float-quantized weights are the stored parts themselves
        else:
            tensors[name] = ref
    config = {k: v for k, v in native.model.config.items() if k != "quantization_config"}
    return Model(native.model.arch, config, tensors, native.model.tokenizer, native.model.generation_config,
                 {**native.model.metadata, "format": native.method})
