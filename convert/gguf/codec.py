"""GGUF as a codec: formats.gguf reads and writes the container, convert.gguf.map maps it to and from the pivot,
llama.cpp (llama-cpp-python) runs it."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from gguf import LlamaFileType

from modelport.convert import archs, dtypes, inspect_view
from modelport.convert.codec import Codec, Option, SaveContext, Written
from modelport.convert.gguf import imatrix as imatrix_file
from modelport.convert.gguf import map as gguf_map
from modelport.convert.gguf import quant_plan
from modelport.convert.gguf.quantize import preset
from modelport.formats import gguf
from modelport.formats.atomic import atomic_output
from modelport.formats.errors import Unsupported

DTYPE = Option("dtype", "Float precision (default: the source's; GGUF: llama.cpp's auto, bf16 stays, else f16).",
               ("f32", "f16", "bf16"))
QUANT = Option("quant", "llama.cpp quantization preset (Q4_K_M, Q8_0, ...; `modelport quantize --help` lists them).")
IMATRIX = Option("imatrix", "llama-imatrix importance matrix (.gguf or .dat) guiding --quant.", type=Path)
# llama.cpp's names per llama_ftype, aliases (Q4_K for Q4_K_M) left out
QUANT_TYPES = tuple(n for n, v in quant_plan.PRESETS.items()
                    if n == next(m for m, w in quant_plan.PRESETS.items() if w == v))


def file_type_name(code: int | None) -> str | None:
    """general.file_type -> llama.cpp's preset name (MOSTLY_Q4_K_M -> Q4_K_M)."""
    try:
        return LlamaFileType(code).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (ValueError, TypeError):
        return None


class GGUFCodec(Codec):
    name = "gguf"
    description = "GGUF for llama.cpp, Ollama, LM Studio (split files too)"
    extensions = (".gguf",)
    options = (DTYPE, QUANT, IMATRIX)
    runtime = "llama.cpp"
    loggers = ("gguf",)  # gguf-py's vocab notes are not the user's business

    def detect(self, path: Path) -> int:
        return 10 if gguf.sniff(path) else 0

    def open(self, path: Path) -> gguf.GGUFContents:
        return gguf.read(path)

    def to_pivot(self, native: gguf.GGUFContents, path: Path):
        return gguf_map.from_gguf(native, path)

    def resolve(self, options: dict, dst: Path) -> dict:
        out = dict(options)
        if "dtype" in out:
            out["dtype"] = dtypes.parse(out["dtype"])
        if "quant" in out:
            out["quant"] = preset(out["quant"])
        if out.get("imatrix") and not out.get("quant"):
            raise Unsupported(dst, "--imatrix guides a GGUF quantization: pass --quant")
        return out

    def save(self, model, options: dict, ctx: SaveContext) -> Written:
        quant = options.get("quant")
        matrix = imatrix_file.load(options["imatrix"]) if options.get("imatrix") else None
        arch, kv, tensors, choices = gguf_map.to_gguf(model, options.get("dtype"), ctx.provenance, ctx.dst, quant,
                                                      matrix)
        with atomic_output(ctx.dst, ctx.force) as partial:
            gguf.write(partial, arch, kv, tensors, late=ctx.late, progress=ctx.progress)
        return Written(len(tensors), sum(r.nbytes for _, r in tensors), quant or options.get("dtype"),
                       [c for c in choices if c["fallback"]])

    def output_name(self, name: str, options: dict) -> str:
        """llama.cpp's naming: Name-Q4_K_M.gguf, Name-F16.gguf (no options: llama.cpp's auto type, F16 or BF16)."""
        return f"{name}-{options.get('quant') or options.get('dtype') or 'auto'}.gguf"

    def planned_bytes(self, model, options: dict) -> int:
        """Exact tensor bytes: the quantization plan chooses every tensor's type from headers alone."""
        _, _, tensors, _ = gguf_map.to_gguf(model, options.get("dtype"), {}, None, options.get("quant"))
        return sum(r.nbytes for _, r in tensors)

    def inspect(self, native: gguf.GGUFContents, path: Path) -> dict:
        kv = {k: v for k, (v, _, _) in native.kv.items()}
        try:
            arch = archs.for_gguf(kv.get("general.architecture", ""), path=path).name
        except Unsupported as e:
            arch = f"unsupported ({e.problem})"
        tok = {"model": kv.get("tokenizer.ggml.model"), "pre": kv.get("tokenizer.ggml.pre"),
               "tokens": len(kv.get("tokenizer.ggml.tokens") or []), "bos_id": kv.get("tokenizer.ggml.bos_token_id"),
               "eos_id": kv.get("tokenizer.ggml.eos_token_id")}
        meta = {k: inspect_view.short(v) for k, v in kv.items() if not k.startswith("tokenizer.ggml.")}
        return inspect_view.view(self.name, arch, len(native.files), list(native.tensors.items()), tok, meta,
                                 gguf_arch=kv.get("general.architecture"))

    def storage_type(self, native: gguf.GGUFContents) -> str:
        kinds = Counter(r.dtype for r in native.tensors.values() if len(r.shape) > 1)
        return file_type_name(native.get("general.file_type")) or kinds.most_common(1)[0][0]

    def parameters(self, native: gguf.GGUFContents, path: Path) -> int:
        # native names: a GGUF whose keys no longer map back (a defect) still validates
        return sum(r.n_elements for r in native.tensors.values())

    def family_support(self, arch: archs.Arch) -> dict:
        return {"read": True, "write": True, "via": None, "arch": arch.gguf_name, "quant": list(QUANT_TYPES),
                "refused": []}

    def families(self, native: gguf.GGUFContents) -> list[archs.Arch]:
        arch = native.get("general.architecture")
        return [a for a in archs.registry().values() if a.gguf_name == arch]


CODEC = GGUFCodec()
