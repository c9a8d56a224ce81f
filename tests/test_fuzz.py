"""Fuzzing every reader with hypothesis: GGUF files, safetensors headers, HF folders (config.json, the index,
tokenizer.json), ONNX models. A reader may accept an input or refuse it with a ModelportError (one line, an exit
code); any other exception, a run past the time limit, or a MemoryError under the 1 GB limit `make fuzz` sets is a
failure, and hypothesis shrinks it to a minimal input.

`make test` runs MODELPORT_FUZZ_EXAMPLES (default 100) examples per reader, derandomized; `make fuzz` runs 100,000
per reader with fresh randomness, a memory limit and a per-example timeout."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport import api
from modelport.formats.errors import ModelportError
from modelport.inspect import inspect

import malicious

EXAMPLES = int(os.environ.get("MODELPORT_FUZZ_EXAMPLES", "100"))
AT_SCALE = os.environ.get("MODELPORT_FUZZ_AT_SCALE") == "1"  # set by `make fuzz`
TIMEOUT_S = int(os.environ.get("MODELPORT_FUZZ_TIMEOUT", "20"))  # one input: a hang if it takes longer
MEMORY = 1 << 30  # one input may not need more than this on top of what the process holds
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not AT_SCALE,
                suppress_health_check=list(HealthCheck), print_blob=True)


class Hang(Exception):
    """An input that ran past TIMEOUT_S."""


@contextmanager
def time_limit():
    def expire(signum, frame):
        raise Hang(f"one input took more than {TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module", autouse=True)
def memory_limit():
    """At scale, the address space is capped at what the process holds now plus 1 GB: an input that needs more
    raises MemoryError, which fails the property."""
    if not AT_SCALE:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    held = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (held + MEMORY, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def read_everything(path: Path) -> None:
    """What every command does first: open and map into the pivot, and inspect."""
    with time_limit():
        for step in (api.load, inspect):
            try:
                step(path)
            except ModelportError:
                pass


@pytest.fixture(scope="module")
def work() -> Path:
    d = Path(tempfile.mkdtemp(prefix="modelport-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Seeds(dict):
    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example: not these bytes
        return "<seed files>"


@pytest.fixture(scope="module")
def seeds(work) -> dict[str, bytes]:
    """Valid inputs to mutate: the tiny llama as safetensors, as our GGUF and as our ONNX."""
    src = malicious.hf_folder(work, name="seed")
    api.convert(src, work / "seed.gguf", dtype="f32")
    api.convert(src, work / "seed.onnx", to="onnx")
    return Seeds(safetensors=(src / "model.safetensors").read_bytes(), gguf=(work / "seed.gguf").read_bytes(),
                 onnx=(work / "seed.onnx").read_bytes(), **{"onnx.data": (work / "seed.onnx.data").read_bytes()})


INTERESTING = [0, 1, 2, 3, 7, 31, 32, 33, 63, 64, 255, 256, 4095, 4096, 1 << 15, 1 << 16, 1 << 31, (1 << 32) - 1,
               1 << 32, 1 << 40, 1 << 62, 1 << 63, (1 << 64) - 1]
mutation = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("u32"), st.integers(0, 1 << 20), st.sampled_from(INTERESTING).map(lambda v: v & 0xFFFFFFFF)),
    st.tuples(st.just("u64"), st.integers(0, 1 << 20), st.sampled_from(INTERESTING)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=32)),
)


def mutate(seed: bytes, edits: list) -> bytes:
    """`seed` with the edits applied (positions taken modulo its length): byte flips, interesting integers written
    over fields, truncation, insertion."""
    b = bytearray(seed)
    for kind, pos, value in edits:
        if not b and kind != "insert":
            continue
        pos %= max(1, len(b))
        if kind == "byte":
            b[pos] = value
        elif kind == "u32":
            b[pos:pos + 4] = struct.pack("<I", value)
        elif kind == "u64":
            b[pos:pos + 8] = struct.pack("<Q", value)
        elif kind == "cut":
            del b[pos:]
        else:
            b[pos:pos] = value
    return bytes(b)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


def _tamper(obj: dict, data) -> dict:
    """`obj` with a few keys replaced by arbitrary JSON, deleted, or added (nested dicts included)."""
    obj = json.loads(json.dumps(obj))
    for _ in range(data.draw(st.integers(1, 3))):
        target = obj
        while isinstance(target, dict) and target and data.draw(st.booleans()):
            inner = target[data.draw(st.sampled_from(sorted(target)))]
            if not isinstance(inner, dict) or not inner:
                break
            target = inner
        if not isinstance(target, dict):
            break
        key = data.draw(st.sampled_from(sorted(target) or ["x"]) | st.text(max_size=6))
        if data.draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = data.draw(json_value)
    return obj


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@FUZZ
@given(edits=st.lists(mutation, min_size=1, max_size=6))
def test_gguf_reader(edits, seeds, work):
    read_everything(_write(work / "fuzz.gguf", mutate(seeds["gguf"], edits)))


@FUZZ
@given(edits=st.lists(mutation, min_size=1, max_size=6))
def test_safetensors_bytes(edits, seeds, work):
    read_everything(_write(work / "fuzz.safetensors", mutate(seeds["safetensors"], edits)))


@FUZZ
@given(data=st.data())
def test_safetensors_header_json(data, seeds, work):
    """The header as JSON: entries, shapes, offsets, dtypes and __metadata__ replaced by arbitrary values."""
    seed = seeds["safetensors"]
    (n,) = struct.unpack("<Q", seed[:8])
    header = _tamper(json.loads(seed[8:8 + n]), data)
    read_everything(_write(work / "fuzz-json.safetensors", malicious.safetensors_bytes(header, seed[8 + n:])))


@FUZZ
@given(data=st.data())
def test_hf_folder_side_files(data, seeds, work):
    """config.json, the shard index and tokenizer.json tampered with, in an otherwise valid folder."""
    d = work / "folder"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    _write(d / "model.safetensors", seeds["safetensors"])
    (d / "config.json").write_text(json.dumps(_tamper(malicious.CONFIG, data)))
    if data.draw(st.booleans()):
        index = {"metadata": {"total_size": 0}, "weight_map": {"model.norm.weight": "model.safetensors"}}
        (d / "model.safetensors.index.json").write_text(json.dumps(_tamper(index, data)))
    if data.draw(st.booleans()):
        tok = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": []}
        (d / "tokenizer.json").write_text(json.dumps(_tamper(tok, data)))
    read_everything(d)


@FUZZ
@given(edits=st.lists(mutation, min_size=1, max_size=6), where=st.sampled_from(["onnx", "onnx.data"]))
def test_onnx_reader(edits, where, seeds, work):
    """The protobuf or its external data mutated (the data file beside it keeps its name)."""
    for name in ("onnx", "onnx.data"):
        content = mutate(seeds[name], edits) if name == where else seeds[name]
        _write(work / f"fuzz.{name}", content)
    read_everything(work / "fuzz.onnx")


@FUZZ
@given(data=st.data())
def test_onnx_initializers(data, seeds, work):
    """Initializers with arbitrary dims, element types, external-data entries and typed-field counts."""
    import onnx

    proto = onnx.load_from_string(seeds["onnx"])
    inits = proto.graph.initializer
    for _ in range(data.draw(st.integers(1, 3))):
        t = inits[data.draw(st.integers(0, len(inits) - 1))]
        field = data.draw(st.sampled_from(["dims", "type", "location", "offset", "float_data"]))
        if field == "dims":
            t.ClearField("dims")
            t.dims.extend(data.draw(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=5)))
        elif field == "type":
            t.data_type = data.draw(st.integers(0, 30))
        elif field in ("location", "offset"):
            key = "location" if field == "location" else data.draw(st.sampled_from(["offset", "length"]))
            for e in t.external_data:
                if e.key == key:
                    e.value = data.draw(st.text(max_size=12))
        else:
            t.data_location = onnx.TensorProto.DEFAULT
            t.ClearField("external_data")
            t.float_data.extend(data.draw(st.lists(st.floats(width=32), max_size=8)))
    _write(work / "fuzz.onnx", proto.SerializeToString())
    _write(work / "fuzz.onnx.data", seeds["onnx.data"])
    read_everything(work / "fuzz.onnx")
