"""GGUF: the mapping between the pivot and GGUF names/keys, llama.cpp quant plans, ggml quantizers, imatrix, tokenizers."""
