"""A corpus of malicious and corrupt inputs, made by code: one or more samples of every class issue 16 found
(GGUF reader, safetensors header, JSON side files, the configuration's counts, tensor-set semantics, ONNX, input
file kinds). Each case builds its input under a folder and names the exit code and the words of its one line."""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
          "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 4,
          "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}


def llama_shapes(config: dict = CONFIG) -> dict[str, list[int]]:
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    for b in range(config["num_hidden_layers"]):
        p = f"model.layers.{b}."
        shapes |= {p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
                   **{p + f"self_attn.{x}_proj.weight": [h, h] for x in "qkvo"},
                   p + "mlp.gate_proj.weight": [f, h], p + "mlp.up_proj.weight": [f, h],
                   p + "mlp.down_proj.weight": [h, f]}
    return shapes


def safetensors_bytes(entries: dict | str, data: bytes, header_len: int | None = None) -> bytes:
    header = (entries if isinstance(entries, str) else json.dumps(entries)).encode()
    return struct.pack("<Q", len(header) if header_len is None else header_len) + header + data


def packed(shapes: dict[str, list[int]], dtype: str = "F32") -> tuple[dict, bytes]:
    """Entries packed back to back as the safetensors library writes them, data all zeros (small random values
    would do as well: the readers never look at them)."""
    entries, off = {}, 0
    for name, shape in shapes.items():
        n = 4 * int(np.prod(shape))
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    return entries, b"\0" * off


def hf_folder(root: Path, config: dict | str = CONFIG, entries=None, data: bytes | None = None, name="model") -> Path:
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if entries is None:
        entries, data = packed(llama_shapes(config if isinstance(config, dict) else CONFIG))
    (d / "model.safetensors").write_bytes(safetensors_bytes(entries, data))
    return d


# ---- GGUF, assembled by hand so that every field can be wrong

def gstr(s: bytes | str) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv_u32(key, v: int) -> bytes:
    return gstr(key) + struct.pack("<II", GGUFValueType.UINT32, v)


def kv_str(key, v) -> bytes:
    return gstr(key) + struct.pack("<I", GGUFValueType.STRING) + gstr(v)


def kv_f32(key, v: float) -> bytes:
    return gstr(key) + struct.pack("<If", GGUFValueType.FLOAT32, v)


def tensor_info(name, dims: list[int], offset: int, qtype=GGMLQuantizationType.F32) -> bytes:
    return gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", qtype, offset)


def gguf_bytes(kvs: list[bytes], infos: list[bytes], data: bytes = b"", align: int = 32) -> bytes:
    head = struct.pack("<IIQQ", GGUF_MAGIC, 3, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    return head + b"\0" * (-len(head) % align) + data


def tiny_gguf(extra: list[bytes] = (), infos: list[bytes] | None = None, data: bytes | None = None,
              arch: bytes = kv_str("general.architecture", "llama")) -> bytes:
    kvs = [arch, *extra]
    if infos is None:
        infos, data = [tensor_info("token_embd.weight", [8, 4], 0), tensor_info("output_norm.weight", [8], 128)], \
            b"\0" * 160
    return gguf_bytes(kvs, infos, data)


def nested_array(depth: int) -> bytes:
    inner = struct.pack("<IQ", GGUFValueType.UINT8, 0)
    for _ in range(depth):
        inner = struct.pack("<IQ", GGUFValueType.ARRAY, 1) + inner
    return gstr("deep") + struct.pack("<I", GGUFValueType.ARRAY) + inner


def patch_u32(blob: bytes, key: str, value: int) -> bytes:
    """A GGUF with the u32 value of `key` replaced (a flipped field, as a bad disk or an attacker leaves it)."""
    needle = gstr(key) + struct.pack("<I", GGUFValueType.UINT32)
    at = blob.index(needle) + len(needle)
    return blob[:at] + struct.pack("<I", value) + blob[at + 4:]


@dataclass
class Case:
    name: str
    build: Callable[[Path], list]  # tmp folder -> CLI argv (after `modelport`)
    code: int
    words: str  # in the one line of stderr


def _file(name: str, content: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(content)
        return tmp / name
    return make


def inspect(name: str, content: bytes, code: int, words: str) -> Case:
    make = _file(name, content)
    return Case(f"{name}", lambda tmp: ["inspect", make(tmp)], code, words)


def convert_folder(name: str, code: int, words: str, **kw) -> Case:
    return Case(name, lambda tmp: ["convert", hf_folder(tmp, **kw), tmp / "out.gguf"], code, words)


def _with(tmp: Path, edit: Callable[[Path], None]) -> list:
    d = hf_folder(tmp)
    edit(d)
    return ["convert", d, tmp / "out.gguf"]


def _config(**over) -> dict:
    return {**CONFIG, **over}


def _entries_with(name: str, **change) -> tuple[dict, bytes]:
    entries, data = packed(llama_shapes())
    entries[name] = {**entries[name], **change}
    return entries, data


def _deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


GOOD_TENSORS = [tensor_info("token_embd.weight", [8, 4], 0), tensor_info("output_norm.weight", [8], 128)]


def cases() -> list[Case]:
    st_entries, st_data = packed(llama_shapes())
    first = "model.embed_tokens.weight"
    return [
        # GGUF reader
        inspect("utf8-key.gguf", tiny_gguf([kv_u32(b"bad\xff\xfekey", 1)]), 2, "not valid UTF-8"),
        inspect("utf8-value.gguf", tiny_gguf([kv_str("general.name", b"\xc3\x28")]), 2, "not valid UTF-8"),
        inspect("align-zero.gguf", tiny_gguf([kv_u32("general.alignment", 0)]), 2, "not a power of two"),
        inspect("align-three.gguf", tiny_gguf([kv_u32("general.alignment", 3)]), 2, "not a power of two"),
        inspect("align-string.gguf", tiny_gguf([kv_str("general.alignment", "32")]), 2, "must be UINT32"),
        inspect("align-float.gguf", tiny_gguf([kv_f32("general.alignment", 32.0)]), 2, "must be UINT32"),
        inspect("dup-key.gguf", tiny_gguf([kv_u32("x", 1), kv_u32("x", 2)]), 2, "appears twice"),
        inspect("dup-tensor.gguf", tiny_gguf(infos=[tensor_info("a", [8], 0), tensor_info("a", [8], 32)],
                                             data=b"\0" * 64), 2, "appears twice"),
        inspect("unaligned.gguf", tiny_gguf(infos=[tensor_info("token_embd.weight", [8, 4], 4)], data=b"\0" * 160),
                2, "expected 0"),
        inspect("overlap.gguf", tiny_gguf(infos=[tensor_info("a", [8], 0), tensor_info("b", [8], 0)],
                                          data=b"\0" * 64), 2, "expected 32"),
        inspect("deep-array.gguf", tiny_gguf([nested_array(600)]), 2, "nests arrays"),
        inspect("array-of-arrays.gguf", tiny_gguf([nested_array(1)]), 2, "nests arrays"),  # llama.cpp refuses even one
        inspect("arch-int.gguf", tiny_gguf(arch=kv_u32("general.architecture", 7)), 2, "must be STRING"),
        inspect("overflow.gguf", tiny_gguf(infos=[tensor_info("a", [1 << 32, 1 << 32, 16], 0)], data=b""), 2,
                "overflow int64"),
        inspect("dims.gguf", tiny_gguf(infos=[tensor_info("a", [8] * 5, 0)], data=b""), 2, "5 dimensions"),
        inspect("blocks.gguf", tiny_gguf(infos=[tensor_info("a", [7], 0, GGMLQuantizationType.Q4_0)], data=b""),
                2, "block size"),
        inspect("name.gguf", tiny_gguf(infos=[tensor_info("n" * 80, [8], 0)], data=b"\0" * 32), 2, "at most 63"),
        inspect("counts.gguf", struct.pack("<IIQQ", GGUF_MAGIC, 3, 1 << 60, 1 << 61) + b"\0" * 64, 2,
                "more than a file of"),
        inspect("file-type-string.gguf", tiny_gguf([kv_str("general.file_type", "F16")]), 2, "must be UINT32"),
        inspect("merges-ints.gguf", tiny_gguf([gstr("tokenizer.ggml.merges") + struct.pack(
            "<IIQ", GGUFValueType.ARRAY, GGUFValueType.INT32, 1) + struct.pack("<i", 5)]), 2, "array of STRING"),
        inspect("scores-short.gguf", tiny_gguf([
            gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", GGUFValueType.ARRAY, GGUFValueType.STRING, 2) +
            gstr("a") + gstr("b"),
            gstr("tokenizer.ggml.scores") + struct.pack("<IIQf", GGUFValueType.ARRAY, GGUFValueType.FLOAT32, 1, 0.0)]),
            2, "differ in length"),
        inspect("version.gguf", struct.pack("<IIQQ", GGUF_MAGIC, 1, 0, 0), 2, "version 1"),
        Case("split-of-zero", lambda tmp: ["inspect", _file("m-00001-of-00000.gguf", tiny_gguf())(tmp)], 2,
             "part 1 of 0"),
        Case("split-repeats", lambda tmp: [_file("m-00002-of-00002.gguf", tiny_gguf())(tmp) and "inspect",
                                           _file("m-00001-of-00002.gguf", tiny_gguf())(tmp)], 2,
             "also in an earlier part"),
        Case("split-no", lambda tmp: [_file("m-00002-of-00002.gguf", tiny_gguf([kv_u32("split.no", 0)]))(tmp)
                                      and "inspect", _file("m-00001-of-00002.gguf", tiny_gguf())(tmp)], 2,
             "split.no is 0"),
        # the configuration GGUF keys give, checked before any loop runs on it
        Case("block-count", lambda tmp: ["convert", _gguf_of(tmp, lambda b: patch_u32(b, "llama.block_count",
                                                                                   67108865)), tmp / "out"],
             2, "num_hidden_layers is 67108865"),
        Case("gguf-config-not-json", lambda tmp: ["convert", _gguf_of(tmp, lambda b: b.replace(
            b'{"architectures"', b'{"architectures"'[:-1] + b"'")), tmp / "out"], 2, "not valid JSON"),
        # safetensors header
        convert_folder("st-deep", 2, "nested more than", entries=_deep_json(5000), data=b""),
        convert_folder("st-infinity", 2, "expected a non-negative integer",
                       entries=json.dumps(_entries_with(first)[0]).replace("[4, 8]", "[Infinity, 8]"),
                       data=st_data),
        convert_folder("st-2to64", 2, "expected a non-negative integer",
                       entries=_entries_with(first, shape=[1 << 64, 8])[0], data=st_data),
        convert_folder("st-float-shape", 2, "expected a non-negative integer",
                       entries=_entries_with(first, shape=[4.0, 8])[0], data=st_data),
        convert_folder("st-bool-shape", 2, "expected a non-negative integer",
                       entries=_entries_with(first, shape=[True, 8])[0], data=st_data),
        convert_folder("st-dict-dtype", 2, "unknown dtype", entries=_entries_with(first, dtype={"a": 1})[0],
                       data=st_data),
        convert_folder("st-meta-list", 2, "__metadata__", entries={"__metadata__": [1], **st_entries}, data=st_data),
        convert_folder("st-meta-int", 2, "__metadata__", entries={"__metadata__": {"a": 1}, **st_entries},
                       data=st_data),
        convert_folder("st-dup-key", 2, "duplicate key",
                       entries=json.dumps(st_entries)[:-1] + ', "model.norm.weight": ' +
                       json.dumps(st_entries["model.norm.weight"]) + "}", data=st_data),
        convert_folder("st-gap", 2, "leaves a gap", entries=_gap(st_entries), data=st_data + b"\0" * 4),
        convert_folder("st-trailing", 2, "after the last tensor", entries=st_entries, data=st_data + b"\0" * 8),
        convert_folder("st-huge-dims", 2, "overflows", entries={"a": {"dtype": "F32", "shape": [1 << 32, 1 << 32, 16],
                                                                     "data_offsets": [0, 0]}}, data=b""),
        convert_folder("st-empty", 2, "holds no tensors", entries={}, data=b""),
        Case("st-header-101MB", lambda tmp: ["inspect", _file("big.safetensors",
                                                              struct.pack("<Q", 101_000_000) + b" " * 101_000_000)(tmp)],
             2, "over the safetensors limit"),
        # JSON side files and the configuration
        convert_folder("config-deep", 2, "nested more than", config=_deep_json(100_000)),
        convert_folder("config-not-object", 2, "expected a JSON object", config="[1, 2]"),
        convert_folder("config-no-heads", 2, "has no 'num_attention_heads'",
                       config={k: v for k, v in CONFIG.items() if k != "num_attention_heads"}),
        convert_folder("config-zero-heads", 2, "num_attention_heads is 0", config=_config(num_attention_heads=0)),
        convert_folder("config-three-heads", 2, "gives 6 rows", config=_config(num_attention_heads=3,
                                                                               num_key_value_heads=3),
                       entries=st_entries, data=st_data),
        convert_folder("config-vocab-2to40", 2, "vocab_size is 1099511627776", config=_config(vocab_size=1 << 40),
                       entries=st_entries, data=st_data),
        convert_folder("config-negative", 2, "hidden_size is -8", config=_config(hidden_size=-8),
                       entries=st_entries, data=st_data),
        convert_folder("config-string-layers", 2, "num_hidden_layers is '1'", config=_config(num_hidden_layers="1"),
                       entries=st_entries, data=st_data),
        convert_folder("config-many-layers", 2, "num_hidden_layers is 67108865", config=_config(num_hidden_layers=67108865),
                       entries=st_entries, data=st_data),
        Case("config-is-a-folder", lambda tmp: _with(tmp, lambda d: ((d / "config.json").unlink(),
                                                                     (d / "config.json").mkdir())), 2, "a folder"),
        Case("shard-dangling", lambda tmp: _with(tmp, lambda d: (d / "model-2.safetensors").symlink_to(
            tmp / "gone")), 2, "dangling symlink"),
        Case("index-not-strings", lambda tmp: _with(tmp, lambda d: (d / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"a": 1}}))), 2, "weight_map must map"),
        Case("index-dup", lambda tmp: _with(tmp, lambda d: (d / "model.safetensors.index.json").write_text(
            '{"weight_map": {}, "weight_map": {}}')), 2, "duplicate key"),
        Case("tokenizer-not-json", lambda tmp: _with(tmp, lambda d: (d / "tokenizer.json").write_text("{nope")), 2,
             "not valid JSON"),
        # semantics: the tensor set against the family
        convert_folder("missing-tensor", 2, "'model.layers.1.mlp.up_proj.weight' is missing",
                       config=_config(num_hidden_layers=2),
                       entries=packed({k: v for k, v in llama_shapes(_config(num_hidden_layers=2)).items()
                                       if k != "model.layers.1.mlp.up_proj.weight"})[0],
                       data=packed({k: v for k, v in llama_shapes(_config(num_hidden_layers=2)).items()
                                    if k != "model.layers.1.mlp.up_proj.weight"})[1]),
        convert_folder("wrong-shape", 2, "has shape [4, 8]", entries=packed({**llama_shapes(), "model.layers.0.self_attn.q_proj.weight": [4, 8]})[0],
                       data=packed({**llama_shapes(), "model.layers.0.self_attn.q_proj.weight": [4, 8]})[1]),
        # input kinds
        Case("symlink-out", lambda tmp: _with(tmp, lambda d: (d / "tokenizer.json").symlink_to("/etc/passwd")), 2,
             "leads out of the model folder"),
        Case("device", lambda tmp: ["inspect", "/dev/zero"], 2, "character device"),
    ]


def _gap(entries: dict) -> dict:
    out, shift = {}, 0
    for i, (name, e) in enumerate(entries.items()):
        shift = 4 if i == 1 else shift
        out[name] = {**e, "data_offsets": [e["data_offsets"][0] + shift, e["data_offsets"][1] + shift]}
    return out


def _gguf_of(tmp: Path, edit: Callable[[bytes], bytes]) -> Path:
    """A real GGUF of the tiny llama (converted by modelport), edited."""
    from modelport import api

    src = hf_folder(tmp, name="seed")
    api.convert(src, tmp / "seed.gguf", dtype="f32")
    (tmp / "bad.gguf").write_bytes(edit((tmp / "seed.gguf").read_bytes()))
    return tmp / "bad.gguf"


def fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.gguf")
    return tmp / "pipe.gguf"
