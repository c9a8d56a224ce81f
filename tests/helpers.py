"""Shared by the tests: the families under test and the CLI as a user runs it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from modelport.convert import archs

# the families our ONNX graph builder builds (the llama-like decoders), as their ONNX sections say
FAMILIES = tuple(name for name, arch in sorted(archs.registry().items()) if arch.onnx.builder)


def run_cli(*args) -> subprocess.CompletedProcess:
    """The installed `modelport` command, in a child process."""
    exe = Path(sys.executable).with_name("modelport")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
