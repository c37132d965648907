"""Benchmarks that print ratios against targets (memory: ``python -m experiments.bench.memory``)."""
