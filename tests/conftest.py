"""Tiny models of each family, made once per session with transformers (see modelport.samples.tiny), and the
transformers fp32 logits they are checked against."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from modelport.samples import tiny
from modelport.validators.runtimes import Transformers


def pytest_collection_modifyitems(items):
    """Tests marked `optimum` need optimum's exporter, an optional extra that caps transformers below 4.58: they skip
    in the default environment (transformers 5), and `make test` runs them in .venv-optimum, which has it."""
    if importlib.util.find_spec("optimum") is None:
        skip = pytest.mark.skip(reason="optimum not installed here: `make test` runs this in .venv-optimum")
        for item in items:
            if "optimum" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _own_digest_cache(tmp_path_factory):
    """Source digests are cached between runs (formats/hashing.py): the tests keep theirs apart from the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MODELPORT_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


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


@pytest.fixture(scope="module")
def hf_reference(checkpoints, mixed_text):
    """sample -> (HF ids of the mixed text, transformers fp32 logits), computed once per family."""
    cache: dict[str, tuple[list[int], np.ndarray]] = {}

    def get(family: str):
        if family not in cache:
            ref = Transformers(checkpoints(family))
            ids = ref.tokenize(mixed_text)
            cache[family] = (ids, ref.logits(ids))
        return cache[family]

    return get
