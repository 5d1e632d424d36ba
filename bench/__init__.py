"""Benchmarks; run them as modules, e.g. ``python -m bench.train_throughput``."""
