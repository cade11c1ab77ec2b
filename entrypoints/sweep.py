"""MLflow entry point ``sweep``: the whole pipeline once per ``n_factors``, as child runs.

    mlflow run . -e sweep --env-manager local -P n_factors_list=4,8,16,32,64

Each child run is a complete ``main`` run (its own prepare/train/cluster children; the
prepare step is reused after the first), so the UI's compare view can plot test RMSE and
NDCG against ``n_factors``.
"""

from __future__ import annotations

import sys

import mlflow

from entrypoints.common import finish, parser_for
from entrypoints.main import run_pipeline
from entrypoints.params import PIPELINE_DEFAULTS, PipelineConfig
from mfrec import tracking
from mfrec.errors import ConfigError, MfrecError

DEFAULTS = {**{k: v for k, v in PIPELINE_DEFAULTS.items() if k != "n_factors"}, "n_factors_list": "4,8,16,32,64"}


def factor_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"n_factors_list must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"n_factors_list needs at least one integer >= 1, got {text!r}")
    return values


def run_sweep(config: PipelineConfig, factors: list[int], progress=None) -> dict:
    mlflow.set_tag("mlflow.runName", f"sweep-k{'-'.join(map(str, factors))}")
    results = {}
    for k in factors:
        child = config.with_factors(k)
        with mlflow.start_run(run_name=child.run_name(), nested=True):
            results[k] = run_pipeline(child, progress=progress)
    return {"runs": {k: r["run_id"] for k, r in results.items()},
            "metrics": {k: {m: r["metrics"][m] for m in ("test_rmse", "test_ndcg_at_10", "train_seconds")}
                        for k, r in results.items()}}


def main(argv=None) -> int:
    tracking.fail_on_termination()
    args = parser_for("python -m entrypoints.sweep", __doc__.split("\n\n")[0], DEFAULTS).parse_args(argv)
    values = {k: getattr(args, k) for k in DEFAULTS}
    try:
        with tracking.top_level_run():
            tracking.log_new_params(values)
            factors = factor_list(values["n_factors_list"])
            config = PipelineConfig.from_params({**values, "n_factors": str(factors[0])})
            result = run_sweep(config, factors)
    except MfrecError as exc:
        print(f"sweep failed: {exc}", file=sys.stderr)
        return 1
    lines = [f"k={k}: test_rmse={m['test_rmse']:.4f} test_ndcg_at_10={m['test_ndcg_at_10']:.4f} "
             f"train_seconds={m['train_seconds']:.1f}" for k, m in result["metrics"].items()]
    return finish(result, args.output_json, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
