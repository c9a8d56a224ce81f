"""A toy modelport plugin: the `npz` format (a folder of config.json, tokenizer files and one uncompressed
tensors.npz) and the `toyllama` family (llama under another model_type)."""
