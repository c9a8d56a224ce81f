"""The runtimes each format runs on: llama.cpp (llama-cpp-python) for GGUF, transformers (torch, CPU, fp32) for
HF folders. Each gives logits for given token ids and tokenizes with the format's own tokenizer."""
from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import numpy as np

from modelport.formats.errors import RuntimeMissing


@cache
def llama_cpp():
    """llama-cpp-python, with ggml's extra buffer types (AMX / repacked weights) turned off for every model we
    load: on CPUs with AMX, llama.cpp's AMX path crashes on quantized models, and the plain CPU path computes the
    same results."""
    try:
        import llama_cpp as lc
    except ImportError:
        raise RuntimeMissing(None, "llama.cpp runtime missing: pip install 'modelport[llama]'") from None
    defaults = lc.llama_model_default_params
    if not getattr(defaults, "_modelport", False):
        def params():
            p = defaults()
            p.use_extra_bufts = False
            return p
        params._modelport = True
        lc.llama_model_default_params = params
    return lc


class LlamaCpp:
    """A GGUF in llama.cpp, CPU only, logits for every position."""

    def __init__(self, path: str | Path, n_ctx: int = 2048, vocab_only: bool = False):
        lc = llama_cpp()
        self.llm = lc.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                            vocab_only=vocab_only, n_gpu_layers=0, type_k=0, type_v=0,  # f32 KV cache: reference-grade
                            n_threads=os.cpu_count(), verbose=bool(os.environ.get("MODELPORT_VERBOSE")),
                            seed=0)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=False)

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def generate(self, prompt: str, max_tokens: int = 16) -> str:
        out = self.llm(prompt, max_tokens=max_tokens, temperature=0.0)
        return out["choices"][0]["text"]

    def close(self) -> None:
        self.llm.close()


class Transformers:
    """An HF folder in transformers, fp32 on the CPU: the reference implementation."""

    def __init__(self, path: str | Path):
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise RuntimeMissing(None, "transformers runtime missing: pip install 'modelport[torch]'") from None
        if not os.environ.get("MODELPORT_VERBOSE"):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # "Loading weights" bars would break one-line errors on stderr
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special).input_ids

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([ids]))
        return out.logits[0].float().numpy()
