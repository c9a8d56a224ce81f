"""The README's Supported table stays in step with the families `modelport archs` lists: every registered family has
a row and no row names a family that is not registered."""
from __future__ import annotations

import json
import re
from pathlib import Path

from support.cli import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def supported_families() -> list[str]:
    """Each row of the Supported table by its HF `model_type` column's first code span: the name a family is
    registered under (the family column may say it shorter: gemma3 for gemma3_text)."""
    section = README.read_text(encoding="utf-8").split("### Supported\n", 1)[1]
    table = [line for line in section.strip().split("\n\n", 1)[0].splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    column = header.index("HF `model_type`")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]  # after the |---| rule
    return [re.search(r"`([^`]+)`", cells[column]).group(1) for cells in rows]


def test_readme_supported_table_lists_the_registered_families():
    r = run_cli("archs", "--json")
    assert r.returncode == 0, r.stderr
    registered = {row["name"] for row in json.loads(r.stdout)}
    rows = supported_families()
    assert len(rows) == len(set(rows)), f"README rows named twice: {rows}"
    assert not registered - set(rows), f"registered families without a README row: {sorted(registered - set(rows))}"
    assert not set(rows) - registered, f"README rows of families not registered: {sorted(set(rows) - registered)}"
