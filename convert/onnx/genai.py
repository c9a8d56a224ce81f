"""genai_config.json for onnxruntime-genai, as its model builder writes it (onnxruntime_genai/models/builders/
base.py make_genai_config), for the graphs of convert.onnx_graph; plus the other files of an ONNX model folder."""
from __future__ import annotations

import json

from modelport.formats.model import Model

from modelport.convert import archs

SEARCH_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}


def _dump(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def genai_config(model: Model, filename: str) -> dict:
    cfg = archs.for_hf(model.arch).normalize(model.config)
    gen = model.generation_config or {}
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    pad = gen.get("pad_token_id", cfg.get("pad_token_id"))
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    context = cfg["max_position_embeddings"]
    return {
        "model": {
            "bos_token_id": gen.get("bos_token_id", cfg.get("bos_token_id")),
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": cfg["head_dim"],
                "hidden_size": cfg["hidden_size"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": cfg["num_attention_heads"],
                "num_hidden_layers": cfg["num_hidden_layers"],
                "num_key_value_heads": cfg["num_key_value_heads"],
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": archs.for_hf(model.arch).onnx.genai_type,  # the family's ONNX section says it
            "vocab_size": cfg["vocab_size"],
        },
        "search": {
            "diversity_penalty": 0.0, "early_stopping": True, "length_penalty": 1.0, "max_length": context,
            "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1, "num_return_sequences": 1,
            "past_present_share_buffer": False,
            **{k: gen.get(k, v) if gen.get(k) is not None else v for k, v in SEARCH_DEFAULTS.items()},
        },
    }


def folder_files(model: Model, filename: str) -> dict[str, bytes]:
    """Everything of an ONNX model folder besides the model and its data: genai_config.json, config.json,
    generation_config.json and the HF tokenizer files (onnxruntime-genai tokenizes with tokenizer.json)."""
    files = {"genai_config.json": _dump(genai_config(model, filename)), "config.json": _dump(model.config),
             **model.tokenizer}
    if model.generation_config:
        files["generation_config.json"] = _dump(model.generation_config)
    return files
