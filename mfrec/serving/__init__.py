"""Serving: the fitted bundle, ranking, fold-in, and the REST contract and pyfunc model."""
