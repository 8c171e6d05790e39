"""Benchmarks (`make bench`): speed and memory measured side by side, written to BENCHMARKS.md.

Nothing in training or serving imports this package."""
