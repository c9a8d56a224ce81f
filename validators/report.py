"""Reports for people and CI systems: a self-contained HTML page (matplotlib PNGs embedded as base64: KL per position,
per-tensor error) and JUnit XML (one test case per gate)."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from xml.etree import ElementTree as ET

from modelport.formats.atomic import atomic_output
from modelport.formats.errors import RuntimeMissing

from .diff import DiffReport
from .parity import Report


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeMissing(None, "HTML reports need matplotlib: pip install 'modelport[report]'") from None
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: Report, tensors: DiffReport | None) -> dict[str, str]:
    """Title -> base64 PNG."""
    plt = pyplot()
    out = {}
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for name, kl in report.kl_per_position.items():
        ax.plot(range(len(kl)), kl, lw=0.8, label=name)
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.set(xlabel="position", ylabel="KL(ref || cand), nats", title="KL divergence per position")
    ax.legend(fontsize=7, ncols=3)
    out["KL per position"] = _png(fig)
    plt.close(fig)
    if tensors is not None:
        rows = [r for r in tensors.tensors if r["rmse"] is not None]
        fig, ax = plt.subplots(figsize=(9, max(3.0, 0.16 * len(rows))))
        ax.barh([r["name"] for r in rows], [max(r["rmse"], 1e-12) for r in rows])
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=6)
        ax.set(xlabel="RMSE (fp32, after dequantization)", title="Per-tensor error")
        out["Per-tensor error"] = _png(fig)
        plt.close(fig)
    return out


def _table(rows: list[dict], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def write_html(report: Report, path: str | Path, tensors: DiffReport | None = None, force: bool = True) -> None:
    verdict = "PASS" if report.passed else f"FAIL ({', '.join(report.failed_gates)})"
    gates = [{"gate": g, **v} for g, v in report.gates.items()]
    texts = [{**{k: v for k, v in t.items() if k != "tokenizer"}, "tokenizer match": t["tokenizer"]["match"],
              "first mismatch": t["tokenizer"]["first_mismatch"]} for t in report.texts]
    images = "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b64}'>"
                     for t, b64 in plots(report, tensors).items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>modelport validate</title><style>
body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}} .pass{{color:#070}} .fail{{color:#b00}} img{{max-width:100%}}
</style></head><body><h1 class="{'pass' if report.passed else 'fail'}">{html.escape(verdict)}</h1>
<p>reference: {html.escape(report.reference.path)} ({report.reference.runtime})<br>
candidate: {html.escape(report.candidate.path)} ({report.candidate.runtime}, {report.candidate.type}, tier
{report.tier})</p><h2>Gates</h2>{_table(gates, ["gate", "value", "limit", "passed", "detail"])}
<h2>Texts</h2>{_table(texts, ["name", "tokens", "kl_mean", "kl_p99", "kl_max", "top1", "max_abs_diff", "ppl_ref",
                             "ppl_cand", "ppl_ratio", "tokenizer match", "first mismatch"])}
{images}</body></html>"""
    with atomic_output(Path(path), force) as partial:
        Path(partial).write_text(page, encoding="utf-8")


def write_junit(report: Report, path: str | Path, force: bool = True) -> None:
    """One <testcase> per gate, a <failure> with the value and limit for each that failed."""
    suite = ET.Element("testsuite", name="modelport.validate", tests=str(len(report.gates)),
                       failures=str(len(report.failed_gates)), time=str(report.seconds))
    for gate, v in report.gates.items():
        case = ET.SubElement(suite, "testcase", classname=f"modelport.validate.{report.candidate.type}", name=gate)
        if not v["passed"]:
            ET.SubElement(case, "failure", message=f"{gate}: {v['value']} (limit {v['limit']}) {v['detail']}")
    with atomic_output(Path(path), force) as partial:
        ET.ElementTree(suite).write(partial, encoding="utf-8", xml_declaration=True)
