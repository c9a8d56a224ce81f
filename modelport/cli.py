"""The `modelport` command. Every command takes --json; errors are one line on stderr with a distinct exit code:
0 ok, 1 validation failed, 2 bad input or usage, 3 unsupported, 4 optional runtime missing, 5 output not written."""
from __future__ import annotations

import json
import logging
import sys
from functools import wraps
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from modelport import api
from modelport.convert import archs
from modelport.formats import registry
from modelport.formats.errors import ModelportError
from modelport.inspect import inspect as inspect_model

err = Console(stderr=True)
out = Console()


def _emit(obj, as_json: bool, human) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2, default=str))
    else:
        human(obj)


def handle_errors(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ModelportError as e:
            click.echo(f"modelport: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("modelport: interrupted; nothing was written", err=True)
            sys.exit(130)
    return wrapper


@click.group()
@click.version_option(api.VERSION, prog_name="modelport")
def main() -> None:
    """Move open models between safetensors, GGUF and ONNX, and prove the result computes the same."""
    logging.getLogger("gguf").setLevel(logging.ERROR)  # gguf-py's vocab notes are not the user's business


def _run_conversion(src: Path, dst: Path, as_json: bool, **options) -> None:
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=err, disable=as_json or not err.is_terminal, transient=True) as bar:
        task = bar.add_task(f"{src.name} -> {dst.name}", total=None)
        result = api.convert(src, dst, progress=lambda n: bar.update(task, advance=n), **options)
    for f in result.fallbacks if not as_json else []:
        err.print(f"note: {f['name']}: {f['fallback']}")
    _emit(vars(result), as_json, lambda r: out.print(
        f"wrote {r['dst']} ({r['target_format']} {r['dtype'] or ''}, {r['tensors']} tensors, "
        f"{r['bytes_written'] / 1e6:.1f} MB)"))


QUANT_HELP = "llama.cpp quantization preset for GGUF output (Q4_K_M, Q8_0, ...; `modelport quantize --help` lists them)."


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(["gguf", "safetensors"]), help="Output format (default: by extension).")
@click.option("--dtype", type=click.Choice(["f32", "f16", "bf16"]), help="Float precision (default: the source's).")
@click.option("--quant", help=QUANT_HELP)
@click.option("--imatrix", type=click.Path(path_type=Path), help="llama-imatrix importance matrix (.gguf or .dat).")
@click.option("--force", is_flag=True, help="Overwrite DST.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def convert(src: Path, dst: Path, to, dtype, quant, imatrix, force, as_json) -> None:
    """Convert SRC (HF folder, .safetensors, .gguf) to DST, quantizing in the same pass with --quant."""
    _run_conversion(src, dst, as_json, to=to, dtype=dtype, quant=quant, imatrix=imatrix, force=force)


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--quant", required=True, help=QUANT_HELP)
@click.option("--imatrix", type=click.Path(path_type=Path), help="llama-imatrix importance matrix (.gguf or .dat).")
@click.option("--force", is_flag=True, help="Overwrite DST.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def quantize(src: Path, dst: Path, quant, imatrix, force, as_json) -> None:
    """Quantize SRC (a GGUF or an HF folder) into the GGUF DST with a llama.cpp preset."""
    _run_conversion(src, dst, as_json, to="gguf", quant=quant, imatrix=imatrix, force=force)


def _print_inspect(info: dict) -> None:
    out.print(f"[bold]{info['path']}[/]  format={info['format']}  arch={info['arch']}  "
              f"parameters={info['parameters']:,}  dtypes={info['dtypes']}")
    size = info["size"]
    out.print(f"size: {size['tensor_bytes'] / 1e6:,.1f} MB of tensors, {size['bits_per_weight']} bits per weight; "
              + ", ".join(f"{t} {b / 1e6:,.1f} MB" for t, b in size["bytes_by_type"].items()))
    out.print(f"tokenizer: {info['tokenizer']}")
    meta = Table("key", "value", title="metadata", show_lines=False)
    for k, v in info["metadata"].items():
        meta.add_row(k, json.dumps(v, default=str)[:120])
    out.print(meta)
    table = Table("name", "shape", "type", "bpw", "bytes", title=f"{len(info['tensors'])} tensors")
    for t in info["tensors"]:
        table.add_row(t["name"], "x".join(map(str, t["shape"])), t["dtype"], f"{t['bpw']:g}", f"{t['bytes']:,}")
    out.print(table)


@main.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def inspect_cmd(path: Path, as_json: bool) -> None:
    """Show a model's format, architecture, parameters, tensors, tokenizer and metadata."""
    _emit(inspect_model(path), as_json, _print_inspect)


@main.command("formats")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def formats_cmd(as_json: bool) -> None:
    """List the formats modelport reads and writes."""
    rows = [{"name": f.name, "extensions": list(f.extensions), "description": f.description}
            for f in registry.formats().values()]
    _emit(rows, as_json, lambda rs: [out.print(f"{r['name']:12} {' '.join(r['extensions']):14} {r['description']}")
                                     for r in rs])


@main.command("archs")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def archs_cmd(as_json: bool) -> None:
    """List the architecture families and the paths they support."""
    rows = [{"name": a.name, "hf_class": a.hf_class, "gguf_arch": a.gguf_name,
             "paths": ["safetensors->gguf", "gguf->safetensors"]} for a in archs.registry().values()]
    _emit(rows, as_json, lambda rs: [out.print(f"{r['name']:10} {r['hf_class']:22} gguf:{r['gguf_arch']:8} "
                                               f"{', '.join(r['paths'])}") for r in rs])
