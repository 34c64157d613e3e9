"""Benchmarks: scripts that print measured tables (see BENCHMARKS.md); tests run tiny versions of each."""
