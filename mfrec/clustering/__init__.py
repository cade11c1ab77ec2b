"""Clustering the learned movie embeddings: the embeddings artifact, KMeans, report and plots."""
