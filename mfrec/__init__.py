"""mfrec: a matrix-factorisation movie recommender that works with or without MLflow."""

__version__ = "0.1.0"
