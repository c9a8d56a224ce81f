"""The malicious corpus (tests/malicious.py) through the CLI: every case one line on stderr naming the file, its
exit code, no traceback and nothing written. Run in-process (click's runner) so the whole corpus takes seconds."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from modelport.cli import main

import malicious


@pytest.mark.parametrize("case", malicious.cases(), ids=lambda c: c.name)
def test_corpus_case(case, tmp_path):
    argv = [str(a) for a in case.build(tmp_path)]
    before = set(tmp_path.iterdir())
    r = CliRunner().invoke(main, argv)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exc_info
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == case.code, r.stderr
    assert len(lines) == 1 and lines[0].startswith("modelport: "), r.stderr
    assert case.words in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert set(tmp_path.iterdir()) == before, "something was written"
