"""The format registry: name, file extensions, magic-byte sniffing, reader and writer. Third-party formats
register through the `modelport.formats` entry-point group."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from .errors import BadInput, Unsupported


@dataclass(frozen=True)
class Format:
    name: str
    extensions: tuple[str, ...]
    sniff: Callable[[Path], bool]
    read: Callable[[Path], Any]
    write: Callable[..., None]
    description: str
    folder: bool = False  # the default for a destination without an extension (the HF model folder)


@cache
def formats() -> dict[str, Format]:
    return {fmt.name: fmt for fmt in (ep.load() for ep in entry_points(group="modelport.formats"))}


def get(name: str) -> Format:
    if name not in formats():
        raise Unsupported(None, f"unknown format {name!r}; known: {', '.join(formats())}")
    return formats()[name]


def detect(path: Path) -> Format:
    """The format of an existing input, by content first and extension second."""
    if not path.exists():
        raise BadInput(path, "does not exist")
    for fmt in formats().values():
        try:
            if fmt.sniff(path):
                return fmt
        except OSError as e:
            raise BadInput(path, f"cannot read: {e.strerror}") from None
    if path.is_dir():
        raise BadInput(path, "no model here: expected config.json and model*.safetensors, or a .gguf")
    raise BadInput(path, f"not a model file modelport reads ({', '.join(formats())})")


def for_output(path: Path, to: str | None) -> Format:
    """The format to write: `--to` when given, else the destination's extension, else an HF folder."""
    if to:
        return get(to)
    for fmt in formats().values():
        if path.suffix in fmt.extensions:
            return fmt
    if path.suffix:
        raise Unsupported(path, f"unknown output extension {path.suffix!r}; pass --to")
    return next(f for f in formats().values() if f.folder)
