"""Quantized HF checkpoints for GPU servers as a codec: compressed-tensors pack-quantized folders written (W4A16 /
W8A16, what vLLM, SGLang and TGI load with their Marlin / Machete / ROCm int4 and int8 kernels), and
compressed-tensors, GPTQ and AWQ folders read back as the float values their kernels compute with. transformers runs
compressed-tensors folders (the library decompresses them on load).

compressed-tensors (and torch) are an optional extra: the codec imports them only when it reads or writes, so the
registry loads without them."""
from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from modelport.convert import archs, inspect_view
from modelport.convert.codec import Codec, Option, SaveContext, Written
from modelport.formats import safetensors, serving
from modelport.formats.atomic import atomic_output
from modelport.formats.errors import BadInput, RuntimeMissing, Unsupported
from modelport.formats.model import Model

WEIGHT_BITS = {"W4A16": 4, "W8A16": 8}  # --quant -> weight bits (activations stay 16-bit: weight-only)
GROUP_SIZES = (32, 128)
QUANT = Option("quant", "compressed-tensors weight-only scheme: W4A16 or W8A16 (int4 / int8 weights, 16-bit "
               "activations).", tuple(WEIGHT_BITS))
GROUP_SIZE = Option("group_size", "compressed-tensors: weights per scale group (default 128).",
                    tuple(map(str, GROUP_SIZES)), int)
ASYMMETRIC = Option("asymmetric", "compressed-tensors: asymmetric groups with zero points (default symmetric).",
                    type=bool)
# the kernels GPTQ / AWQ folders need in transformers, and where transformers cannot load a folder here
KERNELS = {serving.GPTQ: "gptqmodel", serving.AWQ: "awq"}
# transformers' first major version that loads asymmetric pack-quantized folders: 4.57 with compressed-tensors 0.20
# builds zero points of the wrong shape (llm-compressor issue 1618); 5.3 loads them (tests/test_serving.py)
ASYMMETRIC_LOADS_FROM = 5


def _library():
    """The modules that import compressed-tensors and torch, or RuntimeMissing (exit 4) naming the extra."""
    try:
        from . import read, scheme, write
    except ImportError as e:
        raise RuntimeMissing(None, f"{e.name} is not installed: pip install 'modelport[serving]'") from None
    return read, scheme, write


class ServingCodec(Codec):
    name = serving.COMPRESSED_TENSORS
    description = ("Quantized HF folder for vLLM / SGLang / TGI: writes compressed-tensors W4A16 / W8A16; reads "
                   "compressed-tensors, GPTQ and AWQ")
    options = (QUANT, GROUP_SIZE, ASYMMETRIC)
    runtime = "transformers"

    def detect(self, path: Path) -> int:
        return 20 if serving.sniff(path) else 0  # a plain HF folder scores 10

    def open(self, path: Path) -> serving.ServingContents:
        native = serving.read(path)
        _library()[0].modules(native)  # the quantization_config checked against the tensors before anything is written
        return native

    def to_pivot(self, native: serving.ServingContents, path: Path) -> Model:
        return _library()[0].to_pivot(native)

    def resolve(self, options: dict, dst: Path) -> dict:
        if dst.suffix:
            raise BadInput(dst, "a compressed-tensors checkpoint is a folder: give a destination without an extension")
        return {"quant": "W4A16", "group_size": 128, "asymmetric": False, **options}

    def save(self, model: Model, options: dict, ctx: SaveContext) -> Written:
        _, scheme, write = _library()
        bits, group, sym = WEIGHT_BITS[options["quant"]], options["group_size"], not options["asymmetric"]
        tensors, ignore, notes = write.plan(model, bits, group, sym, ctx.dst)
        config = {**model.config, scheme.CONFIG_KEY: scheme.config_entry(bits, group, sym, ignore)}
        out = Model(model.arch, config, tensors, model.tokenizer, model.generation_config, model.metadata)
        with atomic_output(ctx.dst, ctx.force) as partial:
            safetensors.write(partial, out, ctx.provenance, late=ctx.late, progress=ctx.progress)
        return Written(len(tensors), sum(r.nbytes for r in tensors.values()), options["quant"], notes)

    def output_name(self, name: str, options: dict) -> str:
        """llm-compressor's habit: Name-W4A16 (-G32 for a group size other than 128, -asym when asymmetric)."""
        group = "" if options["group_size"] == 128 else f"-G{options['group_size']}"
        return f"{name}-{options['quant']}{group}{'-asym' if options['asymmetric'] else ''}"

    def inspect(self, native: serving.ServingContents, path: Path) -> dict:
        meta = {"config": native.model.config, "quantization": native.qconfig}
        model = native.model
        return inspect_view.view(self.name, model.arch, len(model.metadata["source_files"]),
                                 list(model.tensors.items()), inspect_view.hf_tokenizer(model.tokenizer), meta,
                                 self.parameters(native, path), method=native.method)

    def storage_type(self, native: serving.ServingContents) -> str:
        """INT4 / INT8 (validate's q4 / q8 tiers) for integer weights, FP8 for float-quantized ones."""
        q = native.qconfig
        if native.method != serving.COMPRESSED_TENSORS:
            return f"INT{q.get('bits', q.get('w_bit'))}"
        weights = next(iter(q.get("config_groups", {}).values()), {}).get("weights") or {}
        return f"{'INT' if weights.get('type', 'int') == 'int' else 'FP'}{weights.get('num_bits')}"

    def family_support(self, arch: archs.Arch) -> dict:
        """Written for causal LMs (transformers builds their nn.Linear layers, which compressed-tensors targets)."""
        causal = arch.hf_class.endswith("ForCausalLM")
        return {"read": True, "write": causal, "via": None, "quant": list(WEIGHT_BITS) if causal else [],
                "refused": []}

    def families(self, native: serving.ServingContents) -> list[archs.Arch]:
        return [a for a in archs.registry().values() if a.name == native.model.arch]

    def runnable(self, native: serving.ServingContents, path: Path) -> None:
        kernels = KERNELS.get(native.method)
        if kernels and importlib.util.find_spec(kernels) is None:
            raise RuntimeMissing(path, f"transformers runs {native.method} folders through {kernels}, which is not "
                                       "installed (it builds CUDA kernels); convert the folder to safetensors first")
        groups = native.qconfig.get("config_groups", {}).values()
        asymmetric = any(not ((g.get("weights") or {}).get("symmetric", True)) for g in groups if isinstance(g, dict))
        installed = transformers_major()
        if asymmetric and installed is not None and installed < ASYMMETRIC_LOADS_FROM:
            raise Unsupported(path, f"transformers {installed} with compressed-tensors 0.20 cannot load asymmetric "
                                    f"pack-quantized folders (llm-compressor issue 1618; transformers "
                                    f"{ASYMMETRIC_LOADS_FROM} does); validate its float conversion instead")


def transformers_major() -> int | None:
    """The installed transformers' major version, without importing it; None when absent (the runtime says so)."""
    try:
        return int(version("transformers").split(".")[0])
    except PackageNotFoundError:
        return None


CODEC = ServingCodec()
