"""Benchmarks against the targets of DESIGN.md §5: `python -m tests.bench` (see __main__.py)."""
