"""Batch recommendations (``-e batch``): every user's top-k to parquet, the same ranking as REST."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import REPO_ROOT, venv_env

from mfrec.serving.batch import write_recommendations


def test_every_users_top_k_matches_recommend_and_skips_what_they_rated(served_recommender, small_split, tmp_path):
    rec = served_recommender
    out = tmp_path / "recs.parquet"
    counts = write_recommendations(rec, out, k=7, progress=False)
    table = pd.read_parquet(out)
    n_users = len(rec.user_index)
    assert counts["users"] == n_users and counts["rows"] == len(table) == n_users * 7
    assert list(table.columns) == ["userId", "rank", "movieId", "score", "source"]
    # The REST path's answer for a few users, row for row.
    for user in (1, 414, 610):
        rest = rec.recommend([user], k=7).to_frame()
        mine = table[table["userId"] == user]
        assert mine["movieId"].tolist() == rest["movieId"].tolist()
        assert np.allclose(mine["score"], rest["score"], rtol=1e-6)
    rated = pd.concat(small_split[:3])
    seen = set(zip(rated["userId"], rated["movieId"]))
    assert not any((u, m) in seen for u, m in zip(table["userId"], table["movieId"]))


def test_a_list_of_users_unknown_ones_get_the_popular_list(served_recommender, tmp_path):
    counts = write_recommendations(served_recommender, tmp_path / "r.parquet", users=[5, 10**9, 5], k=3,
                                   progress=False)
    table = pd.read_parquet(tmp_path / "r.parquet")
    assert counts["unknown_users"] == 1 and counts["rows"] == 9
    assert table["userId"].tolist() == [5] * 3 + [10**9] * 3 + [5] * 3
    assert table["source"].tolist() == ["personal"] * 3 + ["popular"] * 3 + ["personal"] * 3


@pytest.mark.slow
def test_the_entry_point_writes_a_registered_models_recommendations(served_recommender, trained_small, tmp_path):
    from benchmarks.served import register_recommender
    from mlflow.artifacts import download_artifacts

    uri = register_recommender(served_recommender, tmp_path, test_rmse=trained_small.metrics["test_rmse"])
    pd.DataFrame({"userId": [1, 2, 999_999]}).to_csv(tmp_path / "users.csv", index=False)
    done = subprocess.run([sys.executable, "-m", "entrypoints.batch", "--model-uri", "models:/mfrec@champion",
                           "--users", str(tmp_path / "users.csv"), "--k", "4", "--output-json",
                           str(tmp_path / "result.json")], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=venv_env(MLFLOW_TRACKING_URI=uri))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert done.stdout.strip().splitlines()[-1] == result["artifact_uri"]
    assert "12 recommendations for 3 users (1 unknown: the popular list)" in done.stderr
    path = download_artifacts(result["artifact_uri"], dst_path=str(tmp_path / "got"), tracking_uri=uri)
    table = pd.read_parquet(path)
    assert table["userId"].tolist() == [1] * 4 + [2] * 4 + [999_999] * 4 and table["rank"].tolist() == [1, 2, 3, 4] * 3
    bad = subprocess.run([sys.executable, "-m", "entrypoints.batch", "--model-uri", "models:/nope@champion"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=venv_env(MLFLOW_TRACKING_URI=uri))
    assert bad.returncode == 1 and "batch failed: model 'models:/nope@champion' could not be loaded" in bad.stderr


def test_a_users_file_is_read_as_written_and_bad_ids_are_refused(served_recommender, tmp_path):
    from mfrec.errors import DataError
    from mfrec.serving.batch import read_users

    (tmp_path / "u.csv").write_text("userId\n007\n42\n")
    assert read_users(tmp_path / "u.csv") == ["007", "42"]  # a text-id model would need "007" as written
    counts = write_recommendations(served_recommender, tmp_path / "r.parquet", users=read_users(tmp_path / "u.csv"),
                                   k=2, progress=False)
    assert counts["unknown_users"] == 0 and pd.read_parquet(tmp_path / "r.parquet")["userId"].tolist() == [7, 7, 42, 42]
    for bad in ("42.9", "abc"):
        (tmp_path / "bad.csv").write_text(f"userId\n{bad}\n")
        with pytest.raises(DataError, match=f"user '{bad}' \\(row 1 of the users\\) is not an integer id"):
            write_recommendations(served_recommender, tmp_path / "x.parquet", users=read_users(tmp_path / "bad.csv"))
    with pytest.raises(DataError, match="cannot be read: no such file"):
        read_users(tmp_path / "nope.csv")
