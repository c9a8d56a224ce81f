"""The `modelport` command. Every command takes --json; errors are one line on stderr with a distinct exit code:
0 ok, 1 validation failed, 2 bad input or usage, 3 unsupported, 4 optional runtime missing, 5 output not written."""
from __future__ import annotations

import json
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


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(["gguf", "safetensors"]), help="Output format (default: by extension).")
@click.option("--dtype", type=click.Choice(["f32", "f16", "bf16"]), help="Float precision (default: the source's).")
@click.option("--force", is_flag=True, help="Overwrite DST.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def convert(src: Path, dst: Path, to, dtype, force, as_json) -> None:
    """Convert SRC (HF folder, .safetensors, .gguf) to DST."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=err, disable=as_json or not err.is_terminal, transient=True) as bar:
        task = bar.add_task(f"{src.name} -> {dst.name}", total=None)
        result = api.convert(src, dst, to=to, dtype=dtype, force=force,
                             progress=lambda n: bar.update(task, advance=n))
    _emit(vars(result), as_json, lambda r: out.print(
        f"wrote {r['dst']} ({r['target_format']}, {r['tensors']} tensors, {r['bytes_written'] / 1e6:.1f} MB)"))


def _print_inspect(info: dict) -> None:
    out.print(f"[bold]{info['path']}[/]  format={info['format']}  arch={info['arch']}  "
              f"parameters={info['parameters']:,}  dtypes={info['dtypes']}")
    out.print(f"tokenizer: {info['tokenizer']}")
    meta = Table("key", "value", title="metadata", show_lines=False)
    for k, v in info["metadata"].items():
        meta.add_row(k, json.dumps(v, default=str)[:120])
    out.print(meta)
    table = Table("name", "shape", "dtype", "bytes", title=f"{len(info['tensors'])} tensors")
    for t in info["tensors"]:
        table.add_row(t["name"], "x".join(map(str, t["shape"])), t["dtype"], f"{t['bytes']:,}")
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
