"""--imatrix: llama-imatrix files in both formats give the bytes llama-quantize gives with the same importances."""
from __future__ import annotations

import ctypes
import struct

import numpy as np
import pytest
from gguf import GGUFValueType

from modelport import api
from modelport.convert.gguf import imatrix
from modelport.convert.gguf import quant_plan
from modelport.formats import gguf
from modelport.formats.model import MemorySlice
from modelport.validators.runtimes import llama_cpp

from support.cli import run_cli


def importances(lossless) -> dict[str, np.ndarray]:
    """Seeded positive importances for every matrix llama.cpp may quantize."""
    rng = np.random.default_rng(7)
    return {name: rng.uniform(0.1, 4.0, ref.shape[-1]).astype(np.float32)
            for name, ref in gguf.read(lossless).tensors.items() if len(ref.shape) == 2}


def write_dat(path, values: dict[str, np.ndarray], ncall: int = 10) -> None:
    """llama-imatrix's legacy format: per entry name, ncall, nval, sums (= mean x ncall); then chunks, dataset."""
    out = struct.pack("<i", len(values))
    for name, v in values.items():
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, v.size)
        out += (v * ncall).astype(np.float32).tobytes()
    out += struct.pack("<i", ncall) + struct.pack("<i", 7) + b"wiki.tx"
    path.write_bytes(out)


def write_gguf(path, values: dict[str, np.ndarray], count: int = 512) -> None:
    """llama-imatrix's GGUF format: NAME.in_sum2 (sums of squares) and NAME.counts per matrix."""
    tensors = []
    for name, v in values.items():
        tensors.append((name + ".in_sum2", MemorySlice.tensor((v * count).reshape(1, -1), "F32")))
        tensors.append((name + ".counts", MemorySlice.tensor(np.full((1, 1), count, np.float32), "F32")))
    kv = [("general.type", "imatrix", GGUFValueType.STRING, None),
          ("imatrix.datasets", ["wiki.txt"], GGUFValueType.ARRAY, GGUFValueType.STRING),
          ("imatrix.chunk_count", 10, GGUFValueType.UINT32, None),
          ("imatrix.chunk_size", 512, GGUFValueType.UINT32, None)]
    gguf.write(path, "imatrix", kv, tensors)


def llama_quantize_with(src, dst, preset: str, values: dict[str, np.ndarray]) -> None:
    lc = llama_cpp()
    params = lc.llama_model_quantize_default_params()
    params.ftype = quant_plan.PRESETS[preset]
    params.nthread = 2
    entries = [lc.llama_model_imatrix_data(n.encode(), v.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), v.size)
               for n, v in values.items()]
    entries.append(lc.llama_model_imatrix_data(None, None, 0))
    params.imatrix = (lc.llama_model_imatrix_data * len(entries))(*entries)
    assert lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0


@pytest.fixture(scope="module")
def wide(checkpoints, tmp_path_factory):
    hf = checkpoints("llama", "float32", "wide")
    lossless = tmp_path_factory.mktemp("imatrix") / "f32.gguf"
    api.convert(hf, lossless, dtype="f32")
    return hf, lossless, importances(lossless)


@pytest.mark.parametrize("fmt", ["dat", "gguf"])
def test_both_file_formats_load_to_the_same_importances(fmt, wide, tmp_path):
    _, _, values = wide
    path = tmp_path / f"m.imatrix.{fmt}"
    (write_dat if fmt == "dat" else write_gguf)(path, values)
    loaded = imatrix.load(path)
    assert set(loaded.values) == set(values)
    for name, v in values.items():
        np.testing.assert_allclose(loaded.values[name], v, rtol=1e-6)
    assert loaded.datasets and loaded.chunk_count == 10


@pytest.mark.parametrize("preset", ["IQ2_XS", "IQ4_XS", "Q4_K_M"])
def test_imatrix_quantization_equals_llama_quantize(preset, wide, tmp_path):
    hf, lossless, values = wide
    path = tmp_path / "m.imatrix"
    write_gguf(path, values)
    exact = imatrix.load(path).values  # what llama-quantize would be handed after its own normalisation
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    r = run_cli("convert", hf, ours, "--quant", preset, "--imatrix", path)
    assert r.returncode == 0, r.stderr
    llama_quantize_with(lossless, theirs, preset, exact)

    a, b = gguf.read(ours), gguf.read(theirs)
    assert list(a.tensors) == list(b.tensors)
    for name, ta in a.tensors.items():
        assert ta.dtype == b.tensors[name].dtype, name
        assert ta.stored.read() == b.tensors[name].stored.read(), f"{name} ({ta.dtype}) differs"
    assert a.get("quantize.imatrix.file") == str(path)
    assert a.get("quantize.imatrix.entries_count") == len(values)
    assert a.get("quantize.imatrix.dataset") == "wiki.txt"
