"""Datasets: download, verify, parse, split and prepare MovieLens (or synthetic) ratings."""
