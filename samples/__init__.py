"""Small inputs for the demo, docs and tests, made by code (never downloaded)."""
