"""Tiny models of each family, made once per session with transformers (see modelport.samples.tiny)."""
from __future__ import annotations

from pathlib import Path

import pytest

from modelport.samples import tiny


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """(family, torch dtype, shape) -> HF folder, made on first use."""
    made: dict[tuple[str, str, str], Path] = {}
    root = tmp_path_factory.mktemp("hf")

    def get(family: str, dtype: str = "float32", shape: str = "tiny") -> Path:
        key = (family, dtype, shape)
        if key not in made:
            made[key] = tiny.make(family, root / f"{family}-{dtype}-{shape}", dtype, shape=shape)
        return made[key]

    return get


@pytest.fixture(scope="session")
def mixed_text() -> str:
    return tiny.mixed_text()
