"""Benchmarks and benchmark inputs: a generator for a full-size replica of the raw dataset."""
