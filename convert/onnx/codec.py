"""ONNX as a codec: formats.onnx reads and writes the container (+ external data), convert.onnx builds graphs from
the pivot (or hands a family without a builder to optimum) and reads them back; onnxruntime runs it."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from modelport.convert import archs, dtypes, inspect_view, provenance
from modelport.convert.codec import Codec, Option, SaveContext, Written
from modelport.convert.onnx import encoder, genai, graph, optimum, quantize, targets
from modelport.convert.onnx import reader as onnx_reader
from modelport.formats import onnx as onnx_format
from modelport.formats.errors import BadInput, ModelportError, Unsupported
from modelport.formats.hashing import Late, SourceHashes

DTYPE = Option("dtype", "Float precision (default: the source's).", ("f32", "f16", "bf16"))
OPS = Option("ops", "ONNX operator set: portable (standard ONNX operators, any runtime), ort (onnxruntime contrib "
             "ops, faster; --quant int4/int8 implies it) or qdq (portable at opset 21, quantized weights as "
             "DequantizeLinear -> MatMul, for the execution providers without contrib ops).", tuple(graph.OPS))
QUANT = Option("quant", "ONNX weight quantization: int4 or int8 (MatMulNBits, or DequantizeLinear with --ops qdq).",
               tuple(graph.QUANT_BITS))
BLOCK_SIZE = Option("block_size", "ONNX --quant: weights per scale block (default 32).", ("32", "64", "128"), int)
ACCURACY_LEVEL = Option("accuracy_level", "ONNX --quant with --ops ort: MatMulNBits' accuracy_level, the minimum "
                        "precision of its activations (0 unset, the op's default; 1 f32, 2 f16, 3 bf16, 4 int8: "
                        "faster on CPU, activations quantized per block).", ("0", "1", "2", "3", "4"), int)
LM_HEAD = Option("lm_head", "ONNX --quant int4 with --ops ort: the LM head (and a tied embedding, which shares its "
                 "operands) in int8 instead: larger, closer logits.", ("int8",))
TARGET = Option("target", "ONNX: the execution provider to run on; picks the op set, dtype and quantization form it "
                "runs well and refuses what it cannot run (`modelport targets` lists them).", tuple(targets.TARGETS))


QDQ_BITS = {"I4": 4, "U4": 4, "I8": 8, "U8": 8}  # DequantizeLinear weight types -> bits


class OnnxCodec(Codec):
    name = "onnx"
    description = "ONNX (+ external data) for ONNX Runtime and onnxruntime-genai"
    extensions = (".onnx",)
    options = (DTYPE, OPS, QUANT, BLOCK_SIZE, ACCURACY_LEVEL, LM_HEAD, TARGET)
    runtime = "onnxruntime"
    other_runtimes = ("openvino",)

    def detect(self, path: Path) -> int:
        return 10 if onnx_format.sniff(path) else 0

    def open(self, path: Path) -> onnx_format.OnnxContents:
        return onnx_format.read(path)

    def to_pivot(self, native: onnx_format.OnnxContents, path: Path):
        return onnx_reader.from_onnx(native, path)

    def resolve(self, options: dict, dst: Path) -> dict:
        out, notes = (targets.apply(options["target"], options, dst) if options.get("target")
                      else (dict(options), []))
        if "dtype" in out:
            out["dtype"] = dtypes.parse(out["dtype"])
        out.setdefault("block_size", 32)
        if out.get("quant") and "ops" not in out:  # the default operator set that holds int4/int8 weights
            out["ops"] = "ort"
            notes.append({"name": dst.name, "fallback": f"--quant {out['quant']} implies --ops ort (MatMulNBits, "
                                                        "an onnxruntime contrib op)"})
        out.setdefault("ops", "portable")
        if out.get("quant") and out["ops"] not in graph.QUANTIZED_OPS:
            raise Unsupported(dst, f"--quant {out['quant']} with --ops {out['ops']}: quantized weights need --ops "
                                   + " or --ops ".join(graph.QUANTIZED_OPS))
        out["notes"] = notes
        return out

    def save(self, model, options: dict, ctx: SaveContext) -> Written:
        """DST a folder (model.onnx, model.onnx.data, genai_config.json, tokenizer, config.json) or `x.onnx` with
        `x.onnx.data` beside it; both files appear whole or not at all."""
        notes, quant = options.get("notes", []), options.get("quant")
        if not archs.for_hf(model.arch, ctx.dst).onnx.builder:
            return self._save_optimum(model, options, ctx)
        encodes = archs.for_hf(model.arch).onnx.encoder is not None
        g = _builder(model)(model, options.get("dtype"), options["ops"], quant, options["block_size"],
                            options.get("symmetric", False), options.get("accuracy_level"),
                            graph.QUANT_BITS.get(options.get("lm_head")))
        meta = {provenance.ARCH: model.arch, provenance.CONFIG: json.dumps(model.config, sort_keys=True),
                **(encoder.metadata(model) if encodes else {}), **ctx.provenance}
        onnx_format.place(ctx.dst, ctx.force,
                          lambda m, d, loc: onnx_format.write(m, d, loc, g.proto, g.weights, meta, ctx.late,
                                                              ctx.progress),
                          lambda: encoder.folder_files(model) if encodes
                          else genai.folder_files(model, onnx_format.MODEL_FILE))
        return Written(len(g.weights), sum(r.nbytes for _, r in g.weights), quant or g.dtype, notes + g.notes)

    @staticmethod
    def _save_optimum(model, options: dict, ctx: SaveContext) -> Written:
        """No graph builder here for this architecture: optimum's exporter writes the folder, and the result says
        so."""
        optimum.check(model.arch, model.config, ctx.dst)  # a family optimum cannot export is named as such first
        if options.get("quant"):
            raise Unsupported(ctx.dst, f"--quant {options['quant']}: {model.arch} goes to ONNX through optimum, "
                                       "which exports f32; quantize its output with `modelport quantize`")
        done = optimum.export(model, ctx.dst, options.get("dtype"), ctx.force, ctx.provenance, ctx.late)
        return Written(len(model.tensors), done.bytes_written, "F32", [{"name": ctx.dst.name, "fallback": done.note}])

    def output_name(self, name: str, options: dict) -> str:
        """The hub's naming for ONNX exports: a folder Name-onnx, Name-onnx-int4, Name-onnx-f16 (onnxruntime-genai
        loads the folder)."""
        kind = options.get("quant") or (options.get("dtype") or "").lower()
        return f"{name}-{self.name}" + (f"-{kind}" if kind else "")

    def planned_bytes(self, model, options: dict) -> int:
        """The graph builder's weights (MatMulNBits blobs sized by their bits and block) from headers alone; a family
        optimum exports is stored f32."""
        if not archs.for_hf(model.arch).onnx.builder:
            return sum(r.n_elements for r in model.tensors.values()) * 4
        g = _builder(model)(model, options.get("dtype"), options["ops"], options.get("quant"), options["block_size"],
                            lm_head_bits=graph.QUANT_BITS.get(options.get("lm_head")))
        return sum(r.nbytes for _, r in g.weights)

    def quantize_file(self, src: Path, dst: Path, quant: str, options: dict, force: bool):
        """An existing ONNX model (ours or anyone's) quantized by onnxruntime's quantizers (int4 / int8 MatMulNBits,
        fp16). SRC a .onnx gives DST.onnx with DST.onnx.data beside it, both whole or neither; SRC a model folder
        gives the folder DST with the other files copied, so onnxruntime-genai loads it as it loaded SRC.
        onnxruntime's quantizers work on the whole model in memory, so unlike `convert` this holds the model (and
        its quantized copy) in RAM."""
        if options.get("imatrix"):
            raise BadInput(options["imatrix"], "--imatrix applies to GGUF quantization, not to ONNX")
        block_size = int(options.get("block_size") or 32)
        level = options.get("accuracy_level")
        folder = src.is_dir()
        if (dst.suffix == ".onnx") == folder:
            raise BadInput(dst, "a model folder quantizes into a folder, a .onnx file into a .onnx file")
        contents = onnx_format.read(src)  # a valid graph whose external data stays in its folder
        hashes = SourceHashes(contents.files)
        proto = quantize.quantize(contents, quant.lower(), block_size, level)
        tensors = quantize.detach_weights(proto)
        prov = provenance.record(self.name, {"quant": quant.lower(), "block_size": block_size}
                                 | ({} if level is None else {"accuracy_level": level}))
        late = Late(provenance.HASHES, hashes.placeholder, hashes.text)

        def write(model: Path, data: Path, location: str) -> None:
            onnx_format.write(model, data, location, proto, tensors, {**contents.metadata, **prov}, late)

        model_files = {f.resolve() for f in contents.files}
        onnx_format.place(dst, force, write, lambda: {f.name: f.read_bytes() for f in sorted(src.iterdir())
                                                      if f.is_file() and f.resolve() not in model_files})
        return Written(len(tensors), sum(r.nbytes for _, r in tensors), quant.lower(), provenance=prov)

    def inspect(self, native: onnx_format.OnnxContents, path: Path) -> dict:
        """The initializers as stored (MatMulNBits blobs included); parameters as the HF model counts them when
        the graph reads back into the pivot."""
        meta = {k: inspect_view.short(v) for k, v in native.metadata.items()}
        params = None
        try:
            model = onnx_reader.from_onnx(native, path)
            arch, tok = model.arch, inspect_view.hf_tokenizer(model.tokenizer)
            params = sum(r.n_elements for r in model.tensors.values())
        except ModelportError as e:  # still a model to describe: say why it does not read back
            arch, tok, meta["read_back"] = "unknown", {}, e.problem
        meta["operators"] = dict(Counter(n.op_type for n in native.proto.graph.node).most_common())
        meta["opsets"] = {o.domain or "ai.onnx": o.version for o in native.proto.opset_import}
        return inspect_view.view(self.name, arch, len(native.files), list(native.tensors.items()), tok, meta,
                                 params)

    def storage_type(self, native: onnx_format.OnnxContents) -> str:
        """INT4 / INT8 for MatMulNBits weights (their bits), else the float type most 2-D initializers have."""
        bits = [a.i for n in native.proto.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
                if a.name == "bits"]
        bits += [QDQ_BITS[native.tensors[n.input[0]].dtype] for n in native.proto.graph.node
                 if n.op_type == "DequantizeLinear" and native.tensors.get(n.input[0]) is not None
                 and native.tensors[n.input[0]].dtype in QDQ_BITS]
        if bits:
            return f"INT{Counter(bits).most_common(1)[0][0]}"
        kinds = Counter(r.dtype for r in native.tensors.values() if len(r.shape) > 1)
        return kinds.most_common(1)[0][0] if kinds else "F32"

    def targets(self) -> list[dict]:
        return targets.rows()

    def family_support(self, arch: archs.Arch) -> dict:
        """Our builder (int4/int8 in one pass), or optimum's exporter with the limits it is known to get wrong, or
        nothing; read back where the graph walk knows the family."""
        via = "builder" if arch.onnx.builder else "optimum" if arch.onnx.optimum is not None else None
        return {"read": arch.onnx.read_back, "write": via is not None, "via": via,
                "quant": list(graph.QUANT_BITS) if via == "builder" else [],
                "refused": [f"{lim.what}: {lim.why}" for lim in arch.onnx.optimum or ()] if via == "optimum" else []}

    def families(self, native: onnx_format.OnnxContents) -> list[archs.Arch]:
        arch = native.metadata.get(provenance.ARCH)
        return [a for a in archs.registry().values() if a.name == arch]

    def runnable(self, native: onnx_format.OnnxContents, path: Path) -> None:
        if not (native.path.parent / "tokenizer.json").is_file():
            raise BadInput(path, "no tokenizer.json beside the ONNX model: validate tokenizes with the model's own "
                                 "tokenizer (convert to a folder, which holds it)")


def _builder(model):
    """The graph builder of `model`'s family: the encoder's where its ONNX section has an Encoder row."""
    return encoder.build if archs.for_hf(model.arch).onnx.encoder is not None else graph.build


CODEC = OnnxCodec()
