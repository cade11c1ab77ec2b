"""MLflow entry point ``sweep``: the whole pipeline once per ``n_factors``, as child runs.

    mlflow run . -e sweep --env-manager local -P n_factors_list=4,8,16,32,64

Each child run is a complete ``main`` run (its own prepare/train/cluster children; the
prepare step is reused after the first), so the UI's compare view can plot test RMSE and
NDCG against ``n_factors``.
"""

from __future__ import annotations

import sys

import mlflow

from entrypoints import main as pipeline
from entrypoints.common import finish, parser_for, fail_on_termination, top_level_run
from mfrec import tracking
from mfrec.errors import ConfigError, MfrecError

DEFAULTS = {**{k: v for k, v in pipeline.DEFAULTS.items() if k != "n_factors"}, "n_factors_list": "4,8,16,32,64"}


def factor_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"n_factors_list must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"n_factors_list needs at least one integer >= 1, got {text!r}")
    return values


def run_sweep(values: dict, progress=None) -> dict:
    tracking.log_new_params(values)
    mlflow.set_tag("mlflow.runName", f"sweep-k{values['n_factors_list'].replace(',', '-')}")
    results = {}
    for k in factor_list(values["n_factors_list"]):
        child = {**{key: v for key, v in values.items() if key != "n_factors_list"}, "n_factors": str(k)}
        with mlflow.start_run(run_name=pipeline.run_name(child), nested=True):
            results[k] = pipeline.run_pipeline(child, progress=progress)
    return {"runs": {k: r["run_id"] for k, r in results.items()},
            "metrics": {k: {m: r["metrics"][m] for m in ("test_rmse", "test_ndcg_at_10", "train_seconds")}
                        for k, r in results.items()}}


def main(argv=None) -> int:
    fail_on_termination()
    args = parser_for("python -m entrypoints.sweep", __doc__.split("\n\n")[0], DEFAULTS).parse_args(argv)
    values = {k: getattr(args, k) for k in DEFAULTS}
    try:
        with top_level_run():
            result = run_sweep(values)
    except MfrecError as exc:
        print(f"sweep failed: {exc}", file=sys.stderr)
        return 1
    lines = [f"k={k}: test_rmse={m['test_rmse']:.4f} test_ndcg_at_10={m['test_ndcg_at_10']:.4f} "
             f"train_seconds={m['train_seconds']:.1f}" for k, m in result["metrics"].items()]
    return finish(result, args.output_json, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
