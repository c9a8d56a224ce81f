"""What a run leaves beside its outputs: manifest.json (sources and their sha256s, each job's options, outputs and
their sha256s, gate results, wall time, peak memory, tool version: what the next run compares against to skip
work), junit.xml (one case per job and per gate) and a model card per source (README.md with the hub's YAML front
matter and a table of the files). All three are written atomically, the manifest after every job."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from modelport.convert import provenance
from modelport.formats.atomic import atomic_output

SCHEMA = "modelport.manifest/1"
FINISHED = ("ok", "gate_failed")  # a job with one of these need not run again while its key is unchanged


@dataclass
class Manifest:
    """The run's record: `data` is manifest.json; `ran` and `skipped` name this run's jobs."""

    path: Path
    data: dict
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    planned: list[dict] = field(default_factory=list)  # every job of the plan, "action": run or skip

    @property
    def jobs(self) -> dict[str, dict]:
        return self.data["jobs"]

    @property
    def passed(self) -> bool:
        return all(j.get("status") == "ok" for j in self.jobs.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, j in self.jobs.items() if j.get("status") != "ok"]


def load(path: Path, recipe_name: str) -> Manifest:
    """The last run's manifest, or an empty one (an unreadable one counts as none: its jobs simply run again)."""
    try:
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA:
            raise ValueError
    except (OSError, ValueError):
        data = {"schema": SCHEMA, "sources": {}, "jobs": {}}
    data.update(tool={"name": "modelport", "version": provenance.VERSION}, recipe=recipe_name)
    return Manifest(path, data)


def write(manifest: Manifest) -> None:
    with atomic_output(manifest.path, force=True) as partial:
        partial.write_text(json.dumps(manifest.data, indent=2, sort_keys=True) + "\n")


def up_to_date(entry: dict | None, key: str, out: Path) -> bool:
    """The job's last result stands: same key, finished, and its files still there at their recorded sizes."""
    if not entry or entry.get("key") != key or entry.get("status") not in FINISHED:
        return False
    base = out if out.is_dir() else out.parent
    files = {name: base / name for name in entry.get("outputs", {})} if out.is_dir() else {out.name: out}
    return bool(files) and all(p.is_file() and p.stat().st_size == entry["outputs"][n]["bytes"]
                               for n, p in files.items())


def write_junit(manifest: Manifest, path: Path) -> None:
    """One <testcase> per job (an <error> when it did not finish) and one per gate (a <failure> with value and
    limit when it failed)."""
    suite = ET.Element("testsuite", name="modelport.run")
    cases = failures = errors = 0
    for name, job in manifest.jobs.items():
        case = ET.SubElement(suite, "testcase", classname="modelport.run", name=name, time=str(job.get("wall_s", 0)))
        cases += 1
        if job.get("status") == "error":
            ET.SubElement(case, "error", message=job.get("error", ""))
            errors += 1
        for gate, g in job.get("validate", {}).get("gates", {}).items():
            case = ET.SubElement(suite, "testcase", classname=f"modelport.run.{name}", name=gate)
            cases += 1
            if not g["passed"]:
                ET.SubElement(case, "failure", message=f"{gate}: {g['value']} (limit {g['limit']}) {g['detail']}")
                failures += 1
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    with atomic_output(path, force=True) as partial:
        ET.ElementTree(suite).write(partial, encoding="utf-8", xml_declaration=True)


def source_license(src: Path) -> str | None:
    """The license the source declares: its README's front matter (the hub's model card), else config.json."""
    from huggingface_hub.repocard import metadata_load

    folder = src if src.is_dir() else src.parent
    if (folder / "README.md").is_file():
        found = (metadata_load(folder / "README.md") or {}).get("license")
        if found:
            return found
    try:
        return json.loads((folder / "config.json").read_text()).get("license")
    except (OSError, ValueError):
        return None


def _size(n: int) -> str:
    return next(f"{n / 1000 ** i:.1f} {unit}" for i, unit in reversed(list(enumerate(("B", "kB", "MB", "GB", "TB"))))
                if n >= 1000 ** i or i == 0)


def write_card(manifest: Manifest, source: str, base_model: str, license: str | None, quantized_by: str,
               path: Path) -> None:
    """The hub's model card for one source's outputs: YAML front matter (base_model, quantized_by, tags, license)
    and a table of files with their sizes and validate figures."""
    from huggingface_hub import ModelCardData

    jobs = {n: j for n, j in manifest.jobs.items() if j.get("source") == source}
    tags = ["modelport"] + sorted({j["format"] for j in jobs.values()})
    kinds = sorted({str(v) for j in jobs.values() for k, v in j["options"].items() if k in ("quant", "dtype")})
    data = ModelCardData(base_model=base_model, license=license, tags=tags + kinds, quantized_by=quantized_by)
    rows = ["| file | format | options | size | status | tier | KL mean | top-1 | ppl ratio |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, job in jobs.items():
        size = sum(o["bytes"] for o in job.get("outputs", {}).values())
        v = job.get("validate")
        figures = [v["tier"], f"{v['overall']['kl_mean']:.3g}", f"{v['overall']['top1']:.3f}",
                   f"{v['overall']['ppl_ratio']:.4f}"] if v else ["-"] * 4
        opts = ", ".join(f"{k}={o}" for k, o in job["options"].items()) or "-"
        rows.append(f"| {name} | {job['format']} | {opts} | {_size(size)} | {job.get('status')} | "
                    + " | ".join(figures) + " |")
    text = (f"---\n{data.to_yaml()}\n---\n\n# {source}\n\nExports of {base_model} made by modelport "
            f"{provenance.VERSION} from one recipe. Each gated file was run in its own runtime against the source in "
            "its own, over the same token ids: KL(source || file) in nats, top-1 agreement and perplexity ratio, "
            "gated by the file's type (or the recipe's limits).\n\n" + "\n".join(rows)
            + "\n\n../manifest.json has every file's sha256 and each job's options.\n")
    with atomic_output(path, force=True) as partial:
        partial.write_text(text, encoding="utf-8")
