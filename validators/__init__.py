"""Parity: the runtimes that run each format, and the metrics that compare them."""
