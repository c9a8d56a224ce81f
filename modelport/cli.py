"""The `modelport` command. Every command takes --json; errors are one line on stderr with a distinct exit code:
0 ok, 1 validation failed, 2 bad input or usage, 3 unsupported, 4 optional runtime missing, 5 output not written,
70 internal error (a bug: the traceback with --debug or MODELPORT_DEBUG=1)."""
from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from contextlib import nullcontext
from functools import wraps
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from modelport import api
from modelport.convert import archs, support
from modelport.convert import codec as codecs
from modelport.convert.gguf.codec import QUANT_TYPES
from modelport.formats.errors import BadInput, ModelportError
from modelport.inspect import inspect as inspect_model

err = Console(stderr=True)
out = Console()


def _emit(obj, as_json: bool, human) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2, default=str))
    else:
        human(obj)


INTERNAL_ERROR = 70  # EX_SOFTWARE (sysexits.h): not 1, which means "validation failed"
PATH_ARGS = ("src", "path", "ref", "a")  # the input each command names first, for an internal error's one line


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return os.environ.get("MODELPORT_DEBUG") == "1" or bool(ctx and ctx.find_root().params.get("debug"))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]


def handle_errors(fn):
    """ModelportError: its one line and exit code. Anything else is a bug: one line naming the input and exit 70,
    the traceback only when debugging."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ModelportError as e:
            click.echo(f"modelport: {_one_line(e)}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("modelport: interrupted; nothing was written", err=True)
            sys.exit(130)
        except Exception as e:  # noqa: BLE001 - the last line of defence: no traceback for users
            if _debug():
                traceback.print_exc()
            where = next((str(kwargs[k]) for k in PATH_ARGS if kwargs.get(k) is not None), "modelport")
            click.echo(f"modelport: {where}: internal error ({type(e).__name__}: {_one_line(e)[:200]}), please "
                       f"report; rerun with --debug for the traceback", err=True)
            sys.exit(INTERNAL_ERROR)
    return wrapper


@click.group()
@click.version_option(api.VERSION, prog_name="modelport")
@click.option("--debug", is_flag=True, help="Print the traceback of an internal error (also MODELPORT_DEBUG=1).")
def main(debug: bool) -> None:
    """Move open models between safetensors, GGUF and ONNX, and prove the result computes the same."""
    for codec in codecs.registry().values():
        for name in codec.loggers:
            logging.getLogger(name).setLevel(logging.ERROR)


def _run_conversion(src: Path, dst: Path, as_json: bool, run) -> None:
    """`run(progress)` (api.convert or api.quantize) under a progress bar, then its notes and result."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=err, disable=as_json or not err.is_terminal, transient=True) as bar:
        task = bar.add_task(f"{src.name} -> {dst.name}", total=None)
        result = run(lambda n: bar.update(task, advance=n))
    for f in result.fallbacks if not as_json else []:
        err.print(f"note: {f['name']}: {f['fallback']}")
    _emit(vars(result), as_json, lambda r: out.print(
        f"wrote {r['dst']} ({r['target_format']} {r['dtype'] or ''}, {r['tensors']} tensors, "
        f"{r['bytes_written'] / 1e6:.1f} MB)"))


# the ONNX codec's option, which `quantize` takes for a whole ONNX model too
ACCURACY_LEVEL = codecs.all_options()["accuracy_level"][0][1]


def _codec_options(fn):
    """One click option per option any codec declares (convert.codec.all_options): choices where every codec that
    takes it lists them, help naming the formats that take it. The codec checks its own values."""
    for name, takers in reversed(list(codecs.all_options().items())):
        first = takers[0][1]
        helps = {o.help for _, o in takers}
        help_text = f"{first.help} [{', '.join(c.name for c, _ in takers)}]" if len(helps) == 1 else \
            " ".join(f"{c.name}: {o.help}" for c, o in takers)
        if first.type is bool:
            fn = click.option(first.flag, name, is_flag=True, help=help_text)(fn)
            continue
        choices = sorted({c for _, o in takers for c in o.choices}, key=lambda v: (len(v), v)) \
            if all(o.choices for _, o in takers) else None
        kind = click.Choice(choices, case_sensitive=False) if choices else \
            click.Path(path_type=Path) if first.type is Path else None
        fn = click.option(first.flag, name, type=kind, help=help_text)(fn)
    return fn


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(sorted(codecs.registry())), help="Output format (default: by "
              "extension; none: a Hugging Face folder).")
@_codec_options
@click.option("--force", is_flag=True, help="Overwrite DST.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def convert(src: Path, dst: Path, to, force, as_json, **options) -> None:
    """Convert SRC (any format `modelport formats` lists) to DST, quantizing in the same pass with --quant. Each
    output format takes its own options (`modelport formats` lists them); one it does not take is refused."""
    _run_conversion(src, dst, as_json, lambda progress: api.convert(src, dst, to, force, progress, **options))


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--quant", required=True, help="The quantization: a llama.cpp preset for GGUF (Q4_K_M, Q8_0, ...: "
              + ", ".join(QUANT_TYPES) + "); for an ONNX SRC, int4, int8 or fp16 (onnxruntime's quantizers).")
@click.option("--to", "to", type=click.Choice(sorted(codecs.registry())), help="Output format (default: SRC's own "
              "quantizer where it has one, else by DST's extension).")
@click.option("--imatrix", type=click.Path(path_type=Path), help="llama-imatrix importance matrix (.gguf or .dat).")
@click.option("--block-size", type=click.Choice(["16", "32", "64", "128"]), help="ONNX int4 / int8: weights per "
              "scale block (default 32).")
@click.option(ACCURACY_LEVEL.flag, "accuracy_level", type=click.Choice(ACCURACY_LEVEL.choices), help="ONNX int4 / "
              "int8: MatMulNBits' accuracy_level, as `convert --help` describes it.")
@click.option("--force", is_flag=True, help="Overwrite DST.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def quantize(src: Path, dst: Path, quant, to, imatrix, block_size, accuracy_level, force, as_json) -> None:
    """Quantize SRC into DST: a GGUF or HF folder into a GGUF with a llama.cpp preset, or an ONNX model (x.onnx, or
    a model folder) into DST (y.onnx with y.onnx.data beside it, or a folder with the other files copied) through
    onnxruntime's quantizers (int4 / int8 weight-only MatMulNBits, or fp16), which hold the whole model in
    memory."""
    options = {"imatrix": imatrix, "block_size": int(block_size) if block_size else None,
               "accuracy_level": ACCURACY_LEVEL.type(accuracy_level) if accuracy_level else None}
    _run_conversion(src, dst, as_json, lambda progress: api.quantize(src, dst, quant, to, force, progress, **options))


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
    rows = [{"name": c.name, "extensions": list(c.extensions), "description": c.description,
             "options": [o.flag for o in c.options], "runtime": c.runtime} for c in codecs.registry().values()]
    def human(rs: list[dict]) -> None:
        for r in rs:
            out.print(f"[bold]{r['name']}[/] {' '.join(r['extensions'])}  options: {' '.join(r['options']) or '-'}; "
                      f"runs in: {r['runtime'] or '-'}", highlight=False)
            out.print(f"    {r['description']}", highlight=False)

    _emit(rows, as_json, human)


def _print_targets(rows: list[dict]) -> None:
    table = Table("target", "format", "provider", "ops (quant)", "dtype", "checked", title="targets (`--json` has "
                  "each row's sources)")
    for r in rows:
        ops = ", ".join(o + (f" ({'/'.join(r['quant'][o])}{', symmetric' if r['symmetric'] else ''})"
                             if r["quant"].get(o) else "") for o in r["ops"])
        table.add_row(r["target"], r["format"], r["provider"], ops, r["dtype"] or "source's",
                      "run here" if r["checked"].startswith("run here") else "docs only")
    out.print(table)


@main.command("targets")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def targets_cmd(as_json: bool) -> None:
    """List the `--target`s (execution providers) each format writes for: the op sets and quantizations each runs,
    its default dtype, and whether that was run here or taken from the provider's documentation."""
    rows = [{"format": c.name, **t} for c in codecs.registry().values() for t in c.targets()]
    _emit(rows, as_json, _print_targets)


def _support(s: dict | None) -> str:
    """One format's cell: rw / r / w and who builds it (the quantization types are listed under the table)."""
    if not s or not (s["read"] or s["write"]):
        return "-"
    rw = ("r" if s["read"] else "") + ("w" if s["write"] else "")
    return " ".join([rw] + ([s["via"]] if s["via"] else []))


def _print_families(rows: list[dict]) -> None:
    table = Table(title="families (r: read, w: write; `--json` has the HF classes)")
    table.add_column("family", no_wrap=True)
    names = list(rows[0]["formats"]) if rows else []
    for name in names:
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(r["name"], *(_support(r["formats"][n]) for n in names))
    out.print(table)
    for name in names:
        quant = {q: None for r in rows for q in (r["formats"][name] or {}).get("quant", [])}
        if quant:
            out.print(f"{name} quantization types (the families it writes): {' '.join(quant)}", highlight=False)
    for r in rows:
        for name, s in r["formats"].items():
            for refused in (s or {}).get("refused", []):
                out.print(f"{r['name']}: no {name} with {refused}", markup=False, highlight=False)


@main.command("archs")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def archs_cmd(name: str | None, as_json: bool) -> None:
    """List the architecture families (or the one NAME, an HF model_type): the conversion paths each supports, who
    builds its ONNX graph, and the quantization types per format."""
    rows = [support.family(archs.for_hf(name).name)] if name else support.families()
    _emit(rows, as_json, _print_families)


def _tokenizer_mark(t: dict) -> str:
    tok = t.get("tokenizer")
    if tok is None:
        return ""
    miss = tok["first_mismatch"]
    return "same" if tok["match"] else f"[red]differs at {miss['position']}: {miss['ref_id']} vs {miss['cand_id']}[/]"


# validate's per-text columns: (header, cell, kept on a narrow terminal or pipe)
TEXT_COLUMNS = (
    ("text", lambda t: t["name"], True),
    ("tokens", lambda t: str(t["tokens"]), True),
    ("KL mean", lambda t: f"{t['kl_mean']:.3g}", True),
    ("KL p99", lambda t: f"{t['kl_p99']:.3g}", False),
    ("KL max", lambda t: f"{t['kl_max']:.3g}", True),
    ("top-1", lambda t: f"{t['top1']:.3f}", True),
    ("max |dlogit|", lambda t: f"{t['max_abs_diff']:.3g}", False),
    ("ppl ref", lambda t: f"{t['ppl_ref']:.4g}", False),
    ("ppl cand", lambda t: f"{t['ppl_cand']:.4g}", False),
    ("ppl ratio", lambda t: f"{t['ppl_ratio']:.4f}", True),
    ("tokenizer", _tokenizer_mark, True),
)
WIDE_TABLE = 130  # columns the whole per-text table needs without cutting cells


def _print_validate(rep: dict) -> None:
    ref, cand = rep["reference"], rep["candidate"]
    out.print(f"reference {ref['path']} ({ref['runtime']})  vs  candidate {cand['path']} ({cand['runtime']}, "
              f"{cand['type']}, gates of tier {rep['tier']})")
    narrow = out.width < WIDE_TABLE
    columns = [c for c in TEXT_COLUMNS if c[2] or not narrow]
    texts = Table(*(c[0] for c in columns), title="per text" + (" (narrow terminal: `--json` has every column)"
                                                                if narrow else ""))
    for t in rep["texts"] + [{"name": "overall", "tokens": rep["overall"]["positions"], **rep["overall"]}]:
        texts.add_row(*(c[1](t) for c in columns))
    out.print(texts)
    gates = Table("gate", "value", "limit", "result", title="gates")
    for name, g in rep["gates"].items():
        gates.add_row(name, f"{g['value']:.4g}", f"{g['limit']:.4g}", "[green]pass[/]" if g["passed"] else
                      f"[red]FAIL[/] {g['detail'] if name == 'tokenizer' else ''}")
    out.print(gates)
    out.print("[green]PASS[/]" if rep["passed"] else f"[red]FAIL[/]: {', '.join(rep['failed_gates'])}")


class _Progress:
    """Long work on stderr: a status line (loading a side) and a line per finished text with its tokens per
    second."""

    def __init__(self):
        self.status = err.status("validating", spinner="dots")

    def __enter__(self):
        self.status.__enter__()
        return self

    def __exit__(self, *exc):
        return self.status.__exit__(*exc)

    def __call__(self, line: str) -> None:
        if ": text " in line:
            err.print(line, highlight=False, markup=False)
        else:
            self.status.update(line)


def _progress(as_json: bool):
    """Progress for people at a terminal only; JSON runs and pipes get none."""
    return _Progress() if not as_json and err.is_terminal else nullcontext(None)


@main.command("validate")
@click.argument("ref", type=click.Path(path_type=Path))
@click.argument("cand", type=click.Path(path_type=Path), required=False)
@click.option("--text-file", type=click.Path(path_type=Path), help="Validate on this UTF-8 text instead of the "
              "built-in texts.")
@click.option("--max-kl", type=float, help="Gate: most mean KL(ref || cand) allowed, nats (default: by type).")
@click.option("--min-top1", type=float, help="Gate: least top-1 agreement allowed, 0..1 (default: by candidate type).")
@click.option("--max-ppl-ratio", type=float, help="Gate: most perplexity(cand)/perplexity(ref) allowed.")
@click.option("--report", "html_report", type=click.Path(path_type=Path), help="Write an HTML report with plots.")
@click.option("--junit", type=click.Path(path_type=Path), help="Write JUnit XML (one test case per gate).")
@click.option("--save-reference", type=click.Path(path_type=Path), help="Save REF's token ids and logits to this "
              ".mpref file; `validate FILE.mpref CAND` then checks candidates without REF.")
@click.option("--stream/--no-stream", default=None, help="Run a safetensors REF module by module from its checkpoint "
              "(default: when holding it in fp32 would not fit in memory). Same figures.")
@click.option("--force", is_flag=True, help="Overwrite the --save-reference file.")
@click.option("--provider", default="CPUExecutionProvider", show_default=True,
              help="onnxruntime execution provider for an ONNX side (CUDAExecutionProvider, "
              "OpenVINOExecutionProvider where onnxruntime-openvino is installed, ...).")
@click.option("--runtime", "runtime", type=click.Choice(sorted({r for c in codecs.registry().values()
                                                                for r in c.other_runtimes})),
              help="Run CAND in this runtime instead of its format's own (ONNX: openvino, OpenVINO's own runtime "
                   "on its CPU).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def validate_cmd(ref: Path, cand: Path | None, text_file, max_kl, min_top1, max_ppl_ratio, html_report, junit,
                 save_reference, stream, force, provider, runtime, as_json) -> None:
    """Run REF (the reference, or a saved .mpref) and then CAND on their own runtimes over the same token ids and
    gate the difference: exit 0 pass, 1 a gate failed, 2 bad input, 3 unsupported, 4 runtime missing. Without CAND,
    only --save-reference's file is written."""
    from modelport.validators import report as reports
    from modelport.validators import texts

    chosen = texts.from_file(text_file) if text_file else None
    if cand is None:
        if not save_reference:
            raise BadInput(None, "give CAND, or --save-reference FILE.mpref to save REF's logits alone")
        with _progress(as_json) as progress:
            dst = api.save_reference(ref, save_reference, chosen, force, stream, progress)
        _emit({"reference": str(dst), "source": str(ref)}, as_json, lambda r: out.print(f"wrote {r['reference']}"))
        return
    if html_report:
        reports.pyplot()  # fail before minutes of work, not after
    with _progress(as_json) as progress:
        rep = api.validate(ref, cand, texts=chosen, max_kl=max_kl, min_top1=min_top1, max_ppl_ratio=max_ppl_ratio,
                           provider=provider, save_reference=save_reference, force=force, stream=stream,
                           progress=progress, runtime=runtime)
    if html_report:
        from modelport.validators.diff import diff
        from modelport.validators.reference import is_saved
        reports.write_html(rep, html_report, None if is_saved(ref) else diff(ref, cand))
    if junit:
        reports.write_junit(rep, junit)
    _emit(rep.to_json(), as_json, _print_validate)
    if not rep.passed:
        click.echo(f"modelport: validation failed: {', '.join(rep.failed_gates)}", err=True)
        sys.exit(1)


def _print_diff(rep: dict) -> None:
    table = Table("tensor", "shape", "types", "max abs", "RMSE", "cosine", "SNR dB", "exact",
                  title=f"{rep['a']} vs {rep['b']}")
    def f(v, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for r in rep["tensors"]:
        table.add_row(r["name"], "x".join(map(str, r["shape"])), f"{r['dtype_a']}/{r['dtype_b']}",
                      f(r["max_abs"], ".3g"), f(r["rmse"], ".3g"), f(r["cosine"], ".6f"), f(r["snr_db"], ".1f"),
                      "yes" if r["bit_exact"] else "")
    out.print(table)
    s = rep["summary"]
    out.print(f"{s['tensors']} tensors compared, {s['bit_exact']} bit-exact; worst: {s['worst']} (cosine "
              f"{'-' if s['worst_cosine'] is None else format(s['worst_cosine'], '.6f')}); lowest SNR "
              + ("-" if s["min_snr_db"] is None else f"{s['min_snr_db']:.1f} dB")
              + (f"; only in A: {rep['only_in_a']}" if rep["only_in_a"] else "")
              + (f"; only in B: {rep['only_in_b']}" if rep["only_in_b"] else ""))


@main.command("diff")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@handle_errors
def diff_cmd(a: Path, b: Path, as_json: bool) -> None:
    """Compare A and B tensor by tensor through the pivot (HF names; quantized tensors dequantized): max abs, RMSE,
    cosine, SNR and bit-exactness per tensor, worst tensor first in the summary."""
    from modelport.validators.diff import diff

    _emit(diff(a, b).to_json(), as_json, _print_diff)


def _print_plan(rows: list[dict]) -> None:
    table = Table("action", "options", "gate", "disk", "memory", "threads", title="plan")
    table.add_column("job", no_wrap=True)
    for r in rows:
        est, gate = r["estimate"], r["gate"]
        table.add_row(r["action"], " ".join(f"{k}={v}" for k, v in r["options"].items()) or "-",
                      "-" if gate is None else " ".join(f"{k}={v}" for k, v in gate["limits"].items()) or "defaults",
                      f"{est['disk_bytes'] / 1e6:,.1f} MB", f"{est['memory_bytes'] / 2**30:,.2f} GiB",
                      str(est["threads"]), r["name"])
    out.print(table)


@main.command("run")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the plan (each job's disk, memory and threads) and run nothing.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run each job as a Ray task: on the cluster at ADDRESS, or a new local one without it "
                   "(pip install 'modelport[ray]').")
@click.option("--jobs", type=click.IntRange(min=1), help="Local jobs at once (default: one per 4 CPUs); each gets "
              "its share of the CPUs and starts only when its memory fits.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (or, with --dry-run, the plan) as JSON.")
@handle_errors
def run_cmd(recipe: Path, dry_run: bool, ray_address, jobs, as_json: bool) -> None:
    """Export every source of RECIPE to every target, validate the gated outputs, and write manifest.json,
    junit.xml and a model card per source; jobs whose inputs and options are unchanged are skipped. Exit 0 when
    every job finished and passed its gates, 1 otherwise (the manifest says which)."""
    from modelport.pipeline import run

    note = (lambda line: None) if as_json else (lambda line: err.print(line, highlight=False, markup=False))
    result = run(recipe, dry_run=dry_run, jobs=jobs, ray=ray_address, note=note)
    if dry_run:
        _emit(result.planned, as_json, _print_plan)
        return
    _emit(result.data, as_json, lambda m: out.print(
        f"{len(result.ran)} ran, {len(result.skipped)} up to date; outputs, manifest.json, junit.xml and model "
        f"cards in {result.path.parent}", highlight=False))
    if not result.passed:
        click.echo(f"modelport: run failed: {', '.join(result.failed)}", err=True)
        sys.exit(1)
