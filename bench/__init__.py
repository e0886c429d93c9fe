"""Benchmarks: run on demand (``python -m bench.engine``), never part of the tests."""
