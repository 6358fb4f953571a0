"""Benchmarks (not an installed package; run the scripts directly)."""
