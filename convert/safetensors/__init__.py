"""Hugging Face safetensors folders: the pivot itself, written as save_pretrained writes it."""
