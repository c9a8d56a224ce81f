"""Typed errors. Each carries the file it is about and an exit code, so the CLI prints one line and exits."""
from __future__ import annotations

from pathlib import Path


class ModelportError(Exception):
    """Base: `path: problem`, exit code 2 (bad input or usage)."""

    exit_code = 2

    def __init__(self, path: str | Path | None, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):  # pickled as its two fields (Exception pickles args, the formatted line)
        return type(self), (self.path, self.problem)


class BadInput(ModelportError):
    """The input is malformed, truncated or inconsistent."""


class OutputExists(ModelportError):
    """The destination exists and --force was not given."""


class Unsupported(ModelportError):
    """A well-formed input of an architecture, format or type we do not handle."""

    exit_code = 3


class RuntimeMissing(ModelportError):
    """An optional runtime (llama-cpp-python, torch/transformers, onnxruntime) is not installed."""

    exit_code = 4


class WriteFailed(ModelportError):
    """The output could not be written (disk full, permission); the partial output was removed."""

    exit_code = 5
