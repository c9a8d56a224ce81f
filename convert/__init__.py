"""What changes between formats: architecture maps, tokenizer maps, dtype casts, the mapping to and from GGUF.

This package shares its name with the API function `modelport.convert`; `modelport/__init__.py` makes it callable."""
