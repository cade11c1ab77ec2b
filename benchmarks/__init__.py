"""Benchmarks and the model-serving fixture (not shipped with the package or a logged model)."""
