"""Scoring on Spark: ``mlflow.pyfunc.spark_udf`` on a registered mfrec model, pyspark local[2]
(docs/serving.md, "Batch scoring"). Needs ``pip install -e ".[spark]"`` and Java; skipped
without pyspark."""

from __future__ import annotations

import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def test_predict_through_spark_udf_matches_the_model(served_recommender, trained_small, small_split, tmp_path,
                                                     monkeypatch):
    pytest.importorskip("pyspark", reason="pip install -e '.[spark]'")
    import mlflow
    from benchmarks.served import mlflow_uris, register_recommender
    from pyspark.sql import SparkSession

    uri = register_recommender(served_recommender, tmp_path, test_rmse=trained_small.metrics["test_rmse"])
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)  # Spark's workers run this environment's Python
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    test = small_split[2].head(40)
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    try:
        with mlflow_uris(uri):
            predict = mlflow.pyfunc.spark_udf(spark, "models:/mfrec@champion", env_manager="local",
                                              result_type="userId long, movieId long, prediction double, known boolean")
        frame = spark.createDataFrame([(int(u), int(m)) for u, m in zip(test["userId"], test["movieId"])],
                                      ["userId", "movieId"])
        rows = frame.withColumn("p", predict("userId", "movieId")).select("userId", "movieId", "p.prediction").collect()
    finally:
        spark.stop()
    got = {(r["userId"], r["movieId"]): r["prediction"] for r in rows}
    want = served_recommender.predict(test["userId"].to_numpy(), test["movieId"].to_numpy())
    assert len(got) == len(test)
    for u, m, p in zip(want["userId"], want["movieId"], want["prediction"]):
        assert got[(int(u), int(m))] == pytest.approx(float(p), rel=1e-6)
