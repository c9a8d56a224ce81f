"""ONNX export through optimum's exporter (optimum-onnx), for the architectures modelport has no graph builder for
(encoders such as BERT, and any family the builder does not handle).

This is the fallback, and it says so: optimum loads the whole model into torch (RAM about the model's fp32 size, and
torch/transformers/optimum installed), traces it with torch.onnx and writes its own graph (weights renamed and
transposed, which `convert.onnx_import` reads back for decoders). modelport only gives it an HF folder, puts its
output in place atomically, and records provenance in the graph's metadata.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from modelport.formats import onnx as onnx_format
from modelport.formats import safetensors
from modelport.formats.atomic import atomic_output
from modelport.formats.errors import RuntimeMissing, Unsupported
from modelport.formats.hashing import Late
from modelport.formats.model import Model

from modelport.convert import archs, provenance
from modelport.convert.dtypes import cast_model

EXPORTER_KEY = provenance.EXPORTER
OPTIMUM_DTYPES = {"F32": "fp32"}  # optimum exports fp16/bf16 on GPU only; `modelport quantize --quant fp16` after


def exported() -> list[str]:
    """The families optimum-onnx exports (each family's ONNX section says so, with the configurations it gets
    wrong)."""
    return sorted(a.name for a in archs.registry().values() if a.onnx.optimum is not None)


def check(model_type: str, config: dict, dst: Path) -> None:
    """Unsupported naming the family and why, before optimum and torch load anything, if optimum's export of this
    config would fail or compute something else than transformers."""
    limits = archs.for_hf(model_type, dst).onnx.optimum
    if limits is None:
        raise Unsupported(dst, f"no ONNX export for {model_type!r}: modelport has no graph builder for it and "
                               f"optimum-onnx does not export it (it does: {', '.join(exported())})")
    for limit in limits:
        if limit.applies(config):
            raise Unsupported(dst, f"no ONNX export for {model_type!r} with {limit.what}: optimum-onnx does not "
                                   f"export it right ({limit.why})")


@dataclass
class Exported:
    files: list[str]  # the output folder's files
    bytes_written: int
    note: str  # who made the graph, for the user: optimum did, not modelport's builder


def _main_export():
    try:
        from optimum.exporters.onnx import main_export
    except ImportError:
        raise RuntimeMissing(None, "exporting this architecture to ONNX goes through optimum: "
                                   "pip install 'modelport[onnx,torch]'") from None
    return main_export


def _task(model: Model, dst: Path) -> str:
    """optimum's task for the config's class (it infers none for a local folder), with the KV cache when offered."""
    import transformers
    from optimum.exporters.onnx import model_configs  # noqa: F401 (registers the ONNX configs with TasksManager)
    from optimum.exporters.tasks import TasksManager

    classes = model.config.get("architectures") or []
    model_class = getattr(transformers, classes[0], None) if classes else None
    if model_class is None:
        raise Unsupported(dst, f"config.json names no transformers class ({classes}); optimum needs one")
    try:
        task = TasksManager.infer_task_from_model(model_class)
        supported = TasksManager.get_supported_tasks_for_model_type(model.arch, "onnx", library_name="transformers")
    except (KeyError, ValueError) as e:
        raise Unsupported(dst, f"optimum cannot export {model.arch!r}: {str(e).splitlines()[0]}") from None
    return task + "-with-past" if task + "-with-past" in supported else task


def _hf_folder(model: Model) -> Path | None:
    """The source's own HF folder, when it is one (optimum reads config.json, weights and tokenizer from it)."""
    folder = model.metadata.get("hf_folder")
    return folder if folder is not None and (folder / "config.json").is_file() else None


def _record(model_file: Path, provenance: dict[str, str]) -> None:
    """Provenance into the exported graph's metadata_props (the graph only: its external data stays as written)."""
    proto = onnx_format.read(model_file).proto
    props = {p.key: p.value for p in proto.metadata_props} | provenance
    del proto.metadata_props[:]
    for key, value in sorted(props.items()):
        proto.metadata_props.add(key=key, value=value)
    model_file.write_bytes(proto.SerializeToString(deterministic=True))


def export(model: Model, dst: Path, dtype: str | None, force: bool, provenance: dict[str, str],
           late: Late | None = None) -> Exported:
    """`model` as an ONNX folder at DST by optimum's `main_export` (task inferred: feature-extraction for encoders,
    text-generation-with-past for decoders), on CPU in fp32. Loads the whole model in torch."""
    check(model.arch, model.config, dst)
    if dst.suffix == ".onnx":
        raise Unsupported(dst, f"{model.arch} goes to ONNX through optimum, which writes a folder: give a folder DST")
    if (dtype or "F32") not in OPTIMUM_DTYPES:
        raise Unsupported(dst, f"optimum exports {model.arch} in f32 on CPU; convert with --dtype f32, then "
                               "`modelport quantize` the ONNX model to fp16")
    main_export = _main_export()
    task = _task(model, dst)
    exporter = f"optimum-onnx {version('optimum-onnx')}"
    with atomic_output(dst, force) as partial, contextlib.ExitStack() as scratch:
        folder = _hf_folder(model)
        if folder is None:  # a GGUF or a bare .safetensors: optimum reads an HF folder, so write one first
            tmp = scratch.enter_context(tempfile.TemporaryDirectory(prefix=".modelport-hf-", dir=dst.parent))
            folder = Path(tmp) / "hf"
            safetensors.write(folder, cast_model(model, "F32"), {})
        try:
            with contextlib.redirect_stdout(io.StringIO()), quiet():
                # library_name pinned: with sentence-transformers installed, optimum would otherwise export a
                # sentence-transformers folder with that library's outputs instead of the model's own
                main_export(str(folder), output=str(partial), task=task, device="cpu", library_name="transformers",
                            dtype=OPTIMUM_DTYPES[dtype or "F32"], do_validation=False)
        except (ValueError, KeyError, NotImplementedError) as e:  # optimum's "not supported" errors
            raise Unsupported(dst, f"optimum cannot export {model.arch!r}: {str(e).splitlines()[0]}") from None
        _record(partial / onnx_format.MODEL_FILE, {EXPORTER_KEY: exporter, **provenance,
                                                   **({late.key: late.value()} if late else {})})
        files = sorted(p.name for p in partial.iterdir())
        total = sum(p.stat().st_size for p in partial.iterdir())
    note = f"exported by {exporter} (optimum.exporters.onnx.main_export, task {task}): modelport has no ONNX " \
           f"graph builder for {model.arch!r}"
    return Exported(files, total, note)


@contextlib.contextmanager
def quiet():
    """optimum and transformers log each step, torch's tracer warns on every shape test; modelport prints its own
    one-line result."""
    loggers = [logging.getLogger(n) for n in ("optimum", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
