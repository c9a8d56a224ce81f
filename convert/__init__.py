"""What changes between formats: architecture maps, tokenizer maps, dtype casts, the mapping to and from GGUF."""
