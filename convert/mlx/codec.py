"""MLX folders (mlx-lm's format for Apple Silicon) as a codec: formats.mlx reads and writes the container,
convert.mlx.map maps it to and from the pivot, mlx-lm runs it (mlx-cpu on Linux, Metal on a Mac)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from modelport.convert import archs, dtypes, inspect_view
from modelport.convert.codec import Codec, Option, SaveContext, Written
from modelport.formats import mlx
from modelport.formats.atomic import atomic_output

from . import map as mlx_map
from . import plan

DTYPE = Option("dtype", "Float precision (default: the source's).", ("f32", "f16", "bf16"))
QUANT = Option("quant", "MLX affine quantization: Nbit or an mlx-lm mixed recipe.", plan.QUANTS)
GROUP_SIZE = Option("group_size", "Values per MLX quantization group (default 64, as mlx-lm).", plan.GROUP_SIZES, int)
DEFAULT_GROUP = 64


class MlxCodec(Codec):
    name = "mlx"
    description = "MLX folder for mlx-lm on Apple Silicon (safetensors with MLX affine quantization)"
    options = (DTYPE, QUANT, GROUP_SIZE)
    runtime = "mlx-lm"

    def detect(self, path: Path) -> int:
        return 20 if mlx.sniff(path) else 0  # outranks the plain HF folder it also is

    def open(self, path: Path) -> mlx.MlxContents:
        return mlx.read(path)

    def to_pivot(self, native: mlx.MlxContents, path: Path):
        return mlx_map.from_mlx(native, path)

    def resolve(self, options: dict, dst: Path) -> dict:
        return {**options, "dtype": dtypes.parse(options.get("dtype")),
                "group_size": options.get("group_size") or DEFAULT_GROUP}

    def save(self, model, options: dict, ctx: SaveContext) -> Written:
        out, notes = mlx_map.to_mlx(model, options.get("dtype"), options.get("quant"), options["group_size"],
                                    ctx.dst)
        with atomic_output(ctx.dst, ctx.force) as partial:
            mlx.write(partial, out, ctx.provenance, late=ctx.late, progress=ctx.progress)
        floats = Counter(r.result_dtype for r in out.tensors.values() if r.result_dtype in dtypes.FLOATS)
        return Written(len(out.tensors), sum(r.nbytes for r in out.tensors.values()),
                       options.get("quant") or options.get("dtype") or floats.most_common(1)[0][0], notes)

    def output_name(self, name: str, options: dict) -> str:
        """mlx-community's naming: Name-4bit, Name-mixed_3_6, Name-bf16 (Name-mlx for the source's precision)."""
        return f"{name}-{options.get('quant') or (options.get('dtype') or 'mlx').lower()}"

    def inspect(self, native: mlx.MlxContents, path: Path) -> dict:
        m = native.model
        return inspect_view.view(self.name, m.arch, len(native.files), list(m.tensors.items()),
                                 inspect_view.hf_tokenizer(m.tokenizer), {"config": m.config},
                                 params=self.parameters(native, path))  # as HF counts them, not packed words

    def storage_type(self, native: mlx.MlxContents) -> str:
        if native.quantized:  # gated as the integer widths of the other formats: the fewest bits decide
            return f"INT{min(bits for bits, _ in native.quantized.values())}"
        kinds = Counter(r.dtype for r in native.model.tensors.values() if len(r.shape) > 1)
        return kinds.most_common(1)[0][0] if kinds else "F32"

    def family_support(self, arch: archs.Arch) -> dict | None:
        if arch.mlx is None:
            return None
        return {"read": True, "write": True, "via": None, "quant": list(plan.QUANTS), "refused": []}

    def families(self, native: mlx.MlxContents) -> list[archs.Arch]:
        return [a for a in archs.registry().values() if a.name == native.model.arch]


CODEC = MlxCodec()
