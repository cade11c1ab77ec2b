"""MLflow entry point ``batch``: a registered model's top-k for every user (or a list), to parquet.

    python -m entrypoints.batch --model-uri models:/mfrec@champion [--users users.csv] \\
        [--k 100] [--exclude-seen true]

Loads the model's bundle (the same ``recommend`` ranking as over REST), ranks the users a block
at a time with a progress bar and logs ``recommendations/recommendations.parquet`` (userId,
rank, movieId, score, source) to the active run or a new one, with ``batch_users``,
``batch_rows`` and ``batch_seconds``. ``--users``: a CSV or parquet file with a ``userId``
column (empty: every user the model knows). The last stdout line is the artifact's URI.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import mlflow

from entrypoints.common import finish, parser_for
from entrypoints.params import parse_bool, parse_number
from mfrec import tracking
from mfrec.errors import ConfigError, DataError, MfrecError
from mfrec.serving.batch import read_users, write_recommendations
from mfrec.serving.contract import MAX_K
from mfrec.serving.recommender import Recommender

DEFAULTS = {"model_uri": "models:/mfrec@champion", "users": "", "k": "100", "exclude_seen": "true"}
ARTIFACT = "recommendations/recommendations.parquet"


def load_recommender(model_uri: str, dst: str) -> Recommender:
    """The :class:`Recommender` inside a logged or registered mfrec model."""
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst))
    except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds for a missing model
        raise DataError(f"model {model_uri!r} could not be loaded: {str(exc).splitlines()[0]}") from None
    try:  # where the pyfunc's artifact "recommender" was logged (its folder keeps its own name)
        flavor = mlflow.models.Model.load(str(local)).flavors["python_function"]
        bundle = local / flavor["artifacts"]["recommender"]["path"]
    except (KeyError, OSError, TypeError) as exc:
        raise DataError(f"model {model_uri!r} is not an mfrec model (no recommender artifact: {exc})") from None
    return Recommender.load(bundle)


def run_batch(model_uri: str, users_path: str, k: int, exclude_seen: bool, progress=None) -> dict:
    with tracking.active_or_new_run() as run, tempfile.TemporaryDirectory(prefix="mfrec-batch-") as tmp:
        tracking.log_new_params({"model_uri": model_uri, "users": users_path, "k": k,
                                 "exclude_seen": str(exclude_seen).lower()})
        rec = load_recommender(model_uri, tmp)
        users = read_users(users_path) if users_path else None
        out = Path(tmp) / "out" / Path(ARTIFACT).name
        counts = write_recommendations(rec, out, users, k, exclude_seen, progress)
        mlflow.log_artifact(str(out), str(Path(ARTIFACT).parent))
        mlflow.log_metrics({"batch_users": counts["users"], "batch_unknown_users": counts["unknown_users"],
                            "batch_rows": counts["rows"], "batch_seconds": counts["seconds"]})
        return {"run_id": run.info.run_id, "artifact_uri": f"runs:/{run.info.run_id}/{ARTIFACT}", **counts}


def main(argv=None) -> int:
    tracking.fail_on_termination()
    args = parser_for("python -m entrypoints.batch", __doc__.split("\n\n")[0], DEFAULTS).parse_args(argv)
    values = {key: getattr(args, key) for key in DEFAULTS}
    try:
        k = parse_number("k", values["k"], int)
        if not 1 <= k <= MAX_K:
            raise ConfigError(f"parameter k must be between 1 and {MAX_K}, got {k}")
        exclude_seen = parse_bool("exclude_seen", values["exclude_seen"])
        with tracking.top_level_run(run_name=f"batch-k{k}-{time.strftime('%H%M%S')}"):
            tracking.log_new_params(values)
            result = run_batch(str(values["model_uri"]), str(values["users"] or ""), k, exclude_seen)
    except MfrecError as exc:
        print(f"batch failed: {exc}", file=sys.stderr)
        return 1
    summary = (f"{result['rows']:,} recommendations for {result['users']:,} users "
               f"({result['unknown_users']:,} unknown: the popular list) in {result['seconds']:.1f} s")
    code = finish(result, args.output_json, summary)
    print(result["artifact_uri"])
    return code


if __name__ == "__main__":
    sys.exit(main())
