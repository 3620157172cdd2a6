"""Benchmarks for `migrate` at fleet scale: `python -m benchmarks.migrate` (see __main__)."""
