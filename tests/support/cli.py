"""The installed `modelport` command, as a user runs it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args) -> subprocess.CompletedProcess:
    """The installed `modelport` command, in a child process."""
    exe = Path(sys.executable).with_name("modelport")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
