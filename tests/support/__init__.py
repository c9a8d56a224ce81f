"""What the tests share, so that no test module imports another: the CLI as a user runs it (cli), the families and
samples under test, read from the registries (families), llama-quantize as the reference for GGUF quantization
(quantize), config variants of the samples and GGUFs as llama.cpp's converter writes them (variants), and the real
tokenizers of the tokenizer-map tests (tokenizers)."""
