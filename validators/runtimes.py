"""The runtimes formats run on: llama.cpp (llama-cpp-python), transformers (torch, CPU, fp32), onnxruntime, OpenVINO and
mlx-lm. Each gives logits for given token ids and tokenizes with the model's own tokenizer. A codec names its runtime
(`Codec.runtime`); `for_codec` finds it here or among the `modelport.runtimes` entry points of other packages."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

import numpy as np

from modelport.formats.errors import BadInput, RuntimeMissing, Unsupported
from modelport.formats.onnx import model_file
from modelport.formats.safetensors import shard_files


@cache
def llama_cpp():
    """llama-cpp-python, with ggml's extra buffer types (AMX / repacked weights) turned off for every model we
    load: on CPUs with AMX, llama.cpp's AMX path crashes on quantized models, and the plain CPU path computes the
    same results. Repacked weights are also a second, anonymous copy beside the mapped file (8B Q4_K_M: 3.5 GB)."""
    try:
        import llama_cpp as lc
    except ImportError:
        raise RuntimeMissing(None, "llama.cpp runtime missing: pip install 'modelport[llama]'") from None
    bindings = lc.llama_cpp  # Llama() calls its defaults through this submodule, not the package's re-export
    defaults = bindings.llama_model_default_params
    if not getattr(defaults, "_modelport", False):
        def params():
            p = defaults()
            p.use_extra_bufts = False
            return p
        params._modelport = True
        bindings.llama_model_default_params = lc.llama_model_default_params = params
    return lc


def _llama(path: str | Path, **kwargs):
    """llama_cpp.Llama on `path`; a file llama.cpp refuses to load is bad input named in one line (llama-cpp-python
    raises a bare ValueError and leaves the reason in llama.cpp's log)."""
    lc = llama_cpp()
    try:
        return lc.Llama(model_path=str(path), n_gpu_layers=0, n_threads=os.cpu_count(), seed=0,
                        verbose=bool(os.environ.get("MODELPORT_VERBOSE")), **kwargs)
    except ValueError as e:
        raise BadInput(path, f"llama.cpp refused to load it ({e}); MODELPORT_VERBOSE=1 shows llama.cpp's reason") \
            from None


# llama.cpp's default micro-batch. Its output and compute buffers hold a batch's rows of logits, so a batch of the
# whole context would be two more copies of a long text's logits (0.49 GB each for 950 tokens at a 128k vocabulary)
BATCH = 512


class LlamaCpp:
    """A GGUF in llama.cpp, CPU only, logits for every position."""

    def __init__(self, path: str | Path, n_ctx: int = 2048, vocab_only: bool = False):
        batch = min(n_ctx, BATCH)
        self.llm = _llama(path, n_ctx=n_ctx, n_batch=batch, n_ubatch=batch, logits_all=True, vocab_only=vocab_only,
                          type_k=0, type_v=0)  # f32 KV cache: reference-grade

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=False)

    def logits(self, ids: list[int]) -> np.ndarray:
        """[len(ids), vocab] float32: a read-only view of llama-cpp-python's scores, valid until the next call (a
        copy would be one more text's worth of logits in memory: 0.5 GB for 950 tokens at a 128k vocabulary)."""
        self.llm.reset()
        self.llm.eval(ids)
        view = self.llm.scores[: len(ids)]
        view.flags.writeable = False
        return view

    def generate(self, prompt: str, max_tokens: int = 16) -> str:
        out = self.llm(prompt, max_tokens=max_tokens, temperature=0.0)
        return out["choices"][0]["text"]

    def close(self) -> None:
        self.llm.close()


def _torch():
    """torch and transformers, quiet unless MODELPORT_VERBOSE is set."""
    try:
        import torch
        import transformers
    except ImportError:
        raise RuntimeMissing(None, "transformers runtime missing: pip install 'modelport[torch]'") from None
    if not os.environ.get("MODELPORT_VERBOSE"):
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars would break one-line errors
        transformers.utils.logging.set_verbosity_error()  # 4.57.3+ warns of a Mistral regex on folders it saved
    return torch, transformers


def _attention(config) -> str | None:
    """eager attention for a model that soft-caps attention scores (gemma2): the sdpa path leaves the cap out."""
    return "eager" if getattr(config, "attn_logit_softcapping", None) else None


class Transformers:
    """An HF folder in transformers, fp32 on the CPU: the reference implementation."""

    def __init__(self, path: str | Path):
        torch, transformers = _torch()
        self.torch = torch
        config = transformers.AutoConfig.from_pretrained(path)
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=torch.float32, attn_implementation=_attention(config), output_loading_info=True)
        if missing := sorted(info["missing_keys"]):
            # transformers initialises what it did not find at random: such a run proves nothing (transformers 5
            # fuses a layer's MoE experts and does not load per-expert compressed-tensors weights into them)
            raise Unsupported(path, f"transformers {transformers.__version__} finds {len(missing)} of its weights "
                                    f"nowhere in this checkpoint (such as {missing[0]}), so it cannot run it")
        self.model = model.eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special).input_ids

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([ids]))
        return out.logits[0].float().numpy()


class TransformersStreamed(Transformers):
    """An HF folder in transformers, fp32 on the CPU, with the weights left in the checkpoint: the model is built on
    the meta device (accelerate's init_empty_weights) and accelerate's cpu_offload hooks read each module's weights
    from the safetensors shards just before its forward, cast to fp32, and drop them after. Memory is bounded by the
    largest tensor (the embedding) and the activations, not the model; the forward is transformers' own, so the
    logits are bit-identical to the in-memory model's. Written here: only the index from parameter names to shard
    and tensor name (tied parameters point at the tensor the checkpoint stores)."""

    def __init__(self, path: str | Path):
        torch, transformers = _torch()
        try:
            from accelerate import cpu_offload, init_empty_weights
            from accelerate.utils import OffloadedWeightsLoader, set_module_tensor_to_device
            from safetensors import safe_open
        except ImportError:
            raise RuntimeMissing(None, "a streamed reference needs accelerate: pip install 'modelport[torch]'") \
                from None
        self.torch = torch
        config = transformers.AutoConfig.from_pretrained(path)
        with init_empty_weights():  # parameters on the meta device; buffers (rope frequencies) computed as usual
            self.model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                                       attn_implementation=_attention(config)).eval()
        self.model.tie_weights()
        stored = {}
        for shard in shard_files(Path(path)):
            with safe_open(shard, framework="pt") as f:
                stored.update({name: str(shard) for name in f.keys()})
        names_of: dict[int, list[str]] = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            names_of.setdefault(id(p), []).append(name)
        index = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            source = next((n for n in names_of[id(p)] if n in stored), None)
            if source is None:
                raise BadInput(Path(path), f"the checkpoint has no tensor for {name}")
            index[name] = {"safetensors_file": stored[source], "weight_name": source, "dtype": "float32"}
        for name, _ in self.model.named_buffers():  # persistent buffers the checkpoint stores, as from_pretrained
            if name in stored:
                with safe_open(stored[name], framework="pt") as f:
                    set_module_tensor_to_device(self.model, name, "cpu", value=f.get_tensor(name).float())
        cpu_offload(self.model, execution_device=torch.device("cpu"), state_dict=OffloadedWeightsLoader(index=index))
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)


class LlamaCppEmbeddings:
    """A GGUF embedding model (BERT and kin) in llama.cpp, CPU only: one vector per text, pooled as the GGUF's
    `{arch}.pooling_type` says. Non-causal models need a whole text in one micro-batch, so n_ubatch = n_ctx."""

    def __init__(self, path: str | Path, n_ctx: int = 512):
        self.llm = _llama(path, embedding=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=False)

    def embed(self, texts: list[str], normalize: bool = False) -> np.ndarray:
        """(texts, dim) float32; `normalize` L2-normalises each row (a sentence-transformers Normalize module)."""
        return np.array([self.llm.embed(t, normalize=normalize) for t in texts], dtype=np.float32)

    def close(self) -> None:
        self.llm.close()


class TransformersEmbeddings:
    """An HF encoder folder in transformers, fp32 on the CPU, pooled as its sentence-transformers files say (mean
    over the attention mask, the [CLS] state or the last token; then L2 normalisation if a Normalize module follows):
    the reference for embeddings. A folder without modules.json is mean-pooled, as sentence-transformers does."""

    POOLERS = {
        "mean": lambda h, mask: (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True),
        "cls": lambda h, mask: h[:, 0],
        "lasttoken": lambda h, mask: h[range(len(h)), mask.sum(1).long() - 1],  # right-padded batches
    }

    def __init__(self, path: str | Path):
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise RuntimeMissing(None, "transformers runtime missing: pip install 'modelport[torch]'") from None
        from modelport.convert.gguf import sentence_transformers
        from modelport.formats.safetensors import sentence_transformers_files

        files = sentence_transformers_files(Path(path))
        self.mode = sentence_transformers.pooling_mode(files) or "mean"
        self.normalize = sentence_transformers.normalizes(files)
        self.torch = torch
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special).input_ids

    def embed(self, texts: list[str]) -> np.ndarray:
        """(texts, dim) float32, the texts padded into one batch."""
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        with self.torch.no_grad():
            states = self.model(**enc).last_hidden_state
        out = self.POOLERS[self.mode](states, enc.attention_mask.to(states.dtype))
        if self.normalize:
            out = self.torch.nn.functional.normalize(out, p=2, dim=1)
        return out.numpy()


QDQ_ACCURACY = "session.qdq_matmulnbits_accuracy_level"  # onnxruntime's session option for fused QDQ MatMuls
ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def require_provider(provider: str):
    """onnxruntime (the module), refusing an execution provider its build lacks (it would fall back to CPU,
    silently)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeMissing(None, "onnxruntime missing: pip install 'modelport[onnx]'") from None
    if provider not in ort.get_available_providers():
        raise RuntimeMissing(None, f"this onnxruntime has no {provider} (it has "
                                   f"{', '.join(ort.get_available_providers())}); install the build for it")
    return ort


class OnnxRuntime:
    """An ONNX decoder (inputs input_ids, attention_mask, position_ids, past_key_values.N.key|value; outputs logits,
    present.N.key|value) in onnxruntime on `provider`, tokenizing with its folder's tokenizer.json."""

    def __init__(self, path: str | Path, provider: str = "CPUExecutionProvider"):
        ort = require_provider(provider)
        self.path = model_file(Path(path))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # unused-initializer and shape notes are not the user's business
        # A QDQ graph computes what its DequantizeLinear nodes say: onnxruntime's CPU fuses DequantizeLinear -> MatMul
        # into MatMulNBits with accuracy level 4 by default, which also quantizes the activations to int8 (measured
        # on the tiny llama, Q4_0 via --ops qdq: mean KL 1.5e-3 against llama.cpp on the dequantized GGUF; level 0:
        # 2.3e-6, as OpenVINO and our MatMulNBits export give). Graphs without DequantizeLinear are unaffected.
        options.add_session_config_entry(QDQ_ACCURACY, "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=[provider])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.past = {n: (i.shape, ONNX_TYPES[i.type]) for n, i in self.inputs.items()
                     if n.startswith("past_key_values.")}  # name -> (shape, dtype)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._tokenizer = None

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(None, feed)))

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.path.parent / "tokenizer.json"))
        return self._tokenizer.encode(text, add_special_tokens=add_special).ids

    def forward(self, ids: list[int], past: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, dict]:
        """Logits [len(ids), vocab] (float32) for `ids` after the cached `past` (None: an empty cache), and the
        cache to pass on (past_key_values.N.* -> the present.N.* arrays)."""
        start = 0
        if past is None:
            past = {}
            for name in self.past:
                shape, dtype = self.past[name]
                past[name] = np.zeros((1, shape[1], 0, shape[3]), dtype=dtype)
        elif self.past:
            start = next(iter(past.values())).shape[2]
        feed = {"input_ids": np.array([ids], dtype=np.int64),
                "attention_mask": np.ones((1, start + len(ids)), dtype=np.int64),
                "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None], **past}
        results = self.run({k: v for k, v in feed.items() if k in self.inputs})
        present = {name: results[name.replace("past_key_values.", "present.")] for name in self.past}
        return results["logits"][0].astype(np.float32), present

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.forward(ids)[0]


def require_mlx_lm(provider: str | None = None):
    try:
        import mlx.core as mx
        import mlx_lm
    except ImportError:
        raise RuntimeMissing(None, "mlx-lm runtime missing: pip install 'modelport[mlx]'") from None
    return mx, mlx_lm


class MlxLm:
    """An MLX folder in mlx-lm (mlx_lm.load, as mlx_lm.generate does) on mlx's default device: the CPU on Linux
    (mlx-cpu), Metal on a Mac; logits for every position in f32."""

    def __init__(self, path: str | Path):
        self.mx, mlx_lm = require_mlx_lm()
        self.model, self.tokenizer = mlx_lm.load(str(path))

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special)

    def logits(self, ids: list[int]) -> np.ndarray:
        out = self.model(self.mx.array([ids]))[0].astype(self.mx.float32)
        return np.array(out)


def require_openvino():
    try:
        import openvino
    except ImportError:
        raise RuntimeMissing(None, "OpenVINO missing: pip install 'modelport[openvino]'") from None
    return openvino


OPENVINO_TYPES = {"f32": np.float32, "f16": np.float16}


class OpenVino(OnnxRuntime):
    """The same decoder in OpenVINO's own runtime on its CPU device: OpenVINO reads the ONNX model itself (its ONNX
    frontend, external data included), so this checks what OpenVINO makes of the graph, not onnxruntime."""

    def __init__(self, path: str | Path, device: str = "CPU"):
        ov = require_openvino()
        self.path = model_file(Path(path))
        core = ov.Core()
        model = core.read_model(str(self.path))
        # f32 inference: OpenVINO's CPU default may compute in bf16 on CPUs that have it, and (2026.4) quantizes the
        # activations of int4/int8-weight MatMuls to int8 in groups of 32 (DYNAMIC_QUANTIZATION_GROUP_SIZE): on the
        # tiny Q4_0 llama that took mean KL vs llama.cpp from 2.3e-6 to 1.5e-3. Neither is what a parity gate measures
        self.compiled = core.compile_model(model, device, {"INFERENCE_PRECISION_HINT": "f32",
                                                           "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})
        self.inputs = {p.get_any_name(): p for p in self.compiled.inputs}
        self.past = {n: ([d.get_length() if d.is_static else None for d in p.get_partial_shape()],
                         OPENVINO_TYPES[p.get_element_type().get_type_name()])
                     for n, p in self.inputs.items() if n.startswith("past_key_values.")}
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]
        self._tokenizer = None

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.compiled(feed)
        return {o.get_any_name(): results[o] for o in self.compiled.outputs}


@dataclass(frozen=True)
class Runtime:
    """How validate runs one format: `open(path, provider=, n_ctx=, tokenizer_only=)` gives an object with
    tokenize(text) and logits(ids) (and close() if it holds resources)."""

    name: str
    open: Callable[..., Any]
    sized: bool = False  # its context length is fixed when it loads: reopened for longer texts
    streamed: Callable[..., Any] | None = None  # `open` for a model that runs without being held in memory
    check: Callable[[str], Any] = lambda provider: None  # raises RuntimeMissing before any work
    describe: Callable[[str], str] | None = None  # the runtime as reports name it, given the provider

    def label(self, provider: str) -> str:
        return self.describe(provider) if self.describe else self.name


RUNTIMES = {r.name: r for r in (
    Runtime("llama.cpp", lambda path, provider=None, n_ctx=64, tokenizer_only=False:
            LlamaCpp(path, n_ctx=n_ctx, vocab_only=tokenizer_only), sized=True),
    Runtime("transformers", lambda path, provider=None, n_ctx=None, tokenizer_only=False: Transformers(path),
            streamed=lambda path, provider=None, n_ctx=None, tokenizer_only=False: TransformersStreamed(path)),
    Runtime("onnxruntime", lambda path, provider="CPUExecutionProvider", n_ctx=None, tokenizer_only=False:
            OnnxRuntime(path, provider), check=require_provider, describe=lambda provider: f"onnxruntime {provider}"),
    Runtime("mlx-lm", lambda path, provider=None, n_ctx=None, tokenizer_only=False: MlxLm(path), check=require_mlx_lm),
    Runtime("openvino", lambda path, provider=None, n_ctx=None, tokenizer_only=False: OpenVino(path),
            check=lambda provider: require_openvino(), describe=lambda provider: "openvino CPU"),
)}


@cache
def _plugins() -> dict[str, Runtime]:
    return {ep.name: ep.load() for ep in entry_points(group="modelport.runtimes")}


def for_codec(codec, name: str | None = None) -> Runtime:
    """The runtime a codec names, or `name` among the others it lists (`Codec.other_runtimes`); a format without one
    cannot be validated, nor one in a runtime it does not list (exit 3)."""
    name = name or codec.runtime
    if name and name != codec.runtime and name not in codec.other_runtimes:
        raise Unsupported(None, f"{codec.name} runs in {', '.join((codec.runtime,) + codec.other_runtimes)}, "
                                f"not {name}")
    runtime = RUNTIMES.get(name) or _plugins().get(name) if name else None
    if runtime is None:
        raise Unsupported(None, f"{codec.name} has no runtime modelport validates in"
                                + (f" ({name} is not installed as a modelport runtime)" if name else ""))
    return runtime
