"""`modelport run recipe.toml`: check the recipe, hash the sources, plan every job, skip the ones whose key the
manifest already holds with their outputs in place, run the rest (local children or Ray tasks), record each as it
finishes, then write the JUnit file and the model cards."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .. import hub
from . import manifest as manifests
from . import plan, schedule
from .recipe import Recipe
from .recipe import load as load_recipe

MANIFEST, JUNIT, CARD = "manifest.json", "junit.xml", "README.md"
THREADS_PER_JOB = 4  # the default share: the quantizers and runtimes scale to a few cores per model


def default_jobs(cpus: int) -> int:
    return max(1, cpus // THREADS_PER_JOB)


def run(recipe: str | Path | Recipe, dry_run: bool = False, jobs: int | None = None, ray: str | None = None,
        note: Callable[[str], None] = lambda line: None) -> manifests.Manifest:
    """Run a recipe (a path or a loaded Recipe); `ray` None runs locally, "" on a new local Ray cluster, else on the
    cluster at that address. `jobs` at most at once locally (default: a job per 4 CPUs). Dry run: the manifest as
    it stands, with `planned` filled and nothing run."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if ray is not None and not dry_run:
        schedule.ray_module()  # exit 4 before any work
    cpus = plan.cpus()
    jobs = jobs or default_jobs(len(cpus))
    if not dry_run:
        recipe.out.mkdir(parents=True, exist_ok=True)
    record = manifests.load(recipe.out / MANIFEST, recipe.path.name)
    sources = []
    for source in recipe.sources:
        known = record.data["sources"].get(source.name, {}).get("files", {})
        state = plan.load_source(recipe, source, known)
        record.data["sources"][source.name] = {"location": source.location, "files": state.files,
                                               **({"revision": state.path.name} if source.is_hub else {})}
        sources.append(state)
    planned = plan.make(recipe, sources, max(1, len(cpus) // jobs),
                        lambda j: manifests.up_to_date(record.jobs.get(j.name), j.key, Path(j.dst)), dry_run)
    todo = [j for j in planned if not j.skip]
    record.skipped = [j.name for j in planned if j.skip]
    record.planned = [{"name": j.name, "action": "skip" if j.skip else "run", **j.record()} for j in planned]
    if dry_run:
        return record
    record.data["jobs"] = {j.name: record.jobs[j.name] for j in planned if j.name in record.jobs}
    for name in record.skipped:
        note(f"{name}: up to date, skipped")
    for src in sources:
        (recipe.out / src.name).mkdir(exist_ok=True)
    manifests.write(record)

    def done(job: plan.Job, result: dict) -> None:
        record.jobs[job.name] = {**job.record(), "output": f"{job.source}/{job.name}", **result}
        record.ran.append(job.name)
        manifests.write(record)  # after every job: a killed run resumes from here
        note(f"{job.name}: {result['status']}" + (f" ({result['error']})" if "error" in result else "")
             + f" in {result['wall_s']:.1f} s")

    runner = schedule.Ray(ray or None) if ray is not None else schedule.Local(jobs, cpus)
    if todo:
        runner.run(todo, done)
    record.data["jobs"] = {j.name: record.jobs[j.name] for j in planned if j.name in record.jobs}  # plan order
    manifests.write(record)
    manifests.write_junit(record, recipe.out / JUNIT)
    for source, state in zip(recipe.sources, sources):
        base = hub.split(source.location)[0] if source.is_hub else source.name
        manifests.write_card(record, source.name, base, recipe.license or manifests.source_license(state.path),
                             recipe.quantized_by, recipe.out / source.name / CARD)
    return record
