"""Evaluation on held-out ratings: metrics, baselines, and the scores of a fitted recommender."""
