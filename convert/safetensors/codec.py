"""Hugging Face folders (and bare .safetensors files) as a codec: formats.safetensors reads and writes them, the
pivot *is* their view (HF names and config), transformers runs them."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from modelport.convert import archs, dtypes, inspect_view
from modelport.convert.codec import Codec, Option, SaveContext, Written
from modelport.formats import safetensors
from modelport.formats.atomic import atomic_output
from modelport.formats.errors import BadInput
from modelport.formats.model import Model

DTYPE = Option("dtype", "Float precision (default: the source's).", ("f32", "f16", "bf16"))


class SafetensorsCodec(Codec):
    name = "safetensors"
    description = "Hugging Face model folder (config.json, safetensors shards, tokenizer) or a bare .safetensors"
    extensions = (".safetensors",)
    folder_output = True
    options = (DTYPE,)
    runtime = "transformers"

    def detect(self, path: Path) -> int:
        return 10 if safetensors.sniff(path) else 0

    def open(self, path: Path) -> Model:
        return safetensors.read(path)

    def to_pivot(self, native: Model, path: Path) -> Model:
        return native

    def resolve(self, options: dict, dst: Path) -> dict:
        return {**options, "dtype": dtypes.parse(options.get("dtype"))}

    def save(self, model: Model, options: dict, ctx: SaveContext) -> Written:
        out = dtypes.cast_model(model, options.get("dtype"))
        with atomic_output(ctx.dst, ctx.force) as partial:
            safetensors.write(partial, out, ctx.provenance, late=ctx.late, bare=ctx.dst.suffix in self.extensions,
                              progress=ctx.progress)
        return Written(len(out.tensors), sum(r.nbytes for r in out.tensors.values()), options.get("dtype"))

    def output_name(self, name: str, options: dict) -> str:
        """An HF folder named after its precision (Name-f16), as the hub's re-uploads are."""
        return f"{name}-{(options.get('dtype') or 'orig').lower()}"

    def planned_bytes(self, model: Model, options: dict) -> int:
        return sum(r.nbytes for r in dtypes.cast_model(model, options.get("dtype")).tensors.values())

    def inspect(self, native: Model, path: Path) -> dict:
        meta = {"config": native.config, **({"safetensors": native.metadata["safetensors_metadata"]}
                                            if native.metadata["safetensors_metadata"] else {})}
        return inspect_view.view(self.name, native.arch, len(native.metadata["source_files"]),
                                 list(native.tensors.items()), inspect_view.hf_tokenizer(native.tokenizer), meta)

    def storage_type(self, native: Model) -> str:
        kinds = Counter(r.result_dtype for r in native.tensors.values() if len(r.shape) > 1)
        return kinds.most_common(1)[0][0] if kinds else "F32"

    def family_support(self, arch: archs.Arch) -> dict:
        return {"read": True, "write": True, "via": None, "quant": [], "refused": []}

    def families(self, native: Model) -> list[archs.Arch]:
        return [a for a in archs.registry().values() if a.name == native.arch]

    def runnable(self, native: Model, path: Path) -> None:
        if not path.is_dir():
            raise BadInput(path, "transformers runs an HF folder (config.json, tokenizer, *.safetensors), not a bare "
                                 ".safetensors file; pass its folder")


CODEC = SafetensorsCodec()
