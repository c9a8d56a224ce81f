"""What modelport does with each family, asked of each codec (`Codec.family_support`), so the listing cannot drift
from the code: which formats read and write it, through what, with which quantization types, and what is refused."""
from __future__ import annotations

from . import archs, codec


def family(name: str) -> dict:
    """One family's row: per format what it can do with the family, and the conversion paths that follow."""
    arch = archs.registry()[name]
    formats = {c.name: c.family_support(arch) for c in codec.registry().values()}
    reads = [f for f, s in formats.items() if s and s["read"]]
    writes = [f for f, s in formats.items() if s and s["write"]]
    return {"name": name, "hf_class": arch.hf_class, "formats": formats,
            "paths": [f"{a}->{b}" for a in reads for b in writes if a != b]}


def families() -> list[dict]:
    return [family(name) for name in sorted(archs.registry())]
