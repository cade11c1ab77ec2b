"""MLflow entry point ``sweep``: the whole pipeline once per ``n_factors``, as child runs.

    mlflow run . -e sweep --env-manager local -P n_factors_list=4,8,16,32,64

Each child run is a complete ``main`` run (its own prepare/train/cluster children; the
prepare step is reused after the first; its ``auto`` settings chosen on validation). The
sweep's run holds the best ``n_factors`` by the validation objective (NDCG@10 by default,
RMSE with ``-P objective=rmse``; ties: fewer factors), ``sweep/results.md`` and
``sweep/metrics_by_n_factors.png``; only the best child's model is registered (the champion
rule of ``main`` then decides the alias).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import mlflow

from entrypoints.common import finish, parser_for
from entrypoints.main import register, run_pipeline
from entrypoints.prepare import log_inputs
from entrypoints.params import PIPELINE_DEFAULTS, PipelineConfig, run_name
from mfrec import tracking
from mfrec.clustering.plots import sweep_png
from mfrec.errors import ConfigError, MfrecError

SWEEP_METRICS = ("best_val_rmse", "val_ndcg_at_10", "test_rmse", "test_ndcg_at_10", "train_seconds")

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
    """One child pipeline per n_factors (each choosing its ``auto`` settings on validation); the
    parent gets the best n_factors by the validation objective (NDCG@10, or RMSE with
    ``objective=rmse``; ties: fewer factors), a table and a plot, and only that child's model
    is registered."""
    results = {}
    for k in factors:
        child = config.with_factors(k)
        with mlflow.start_run(run_name=child.run_name(), nested=True):
            results[k] = run_pipeline(child, progress=progress)
    rows = [{"n_factors": k, "run_id": r["run_id"], **{m: r["metrics"][m] for m in SWEEP_METRICS}}
            for k, r in results.items()]
    by_rmse = config.search.objective == "rmse"
    best = min(rows, key=lambda row: (row["best_val_rmse"] if by_rmse else -row["val_ndcg_at_10"], row["n_factors"]))
    criterion = "validation RMSE" if by_rmse else "validation NDCG@10"
    mlflow.log_metrics(tracking.finite_metrics({
        "best_n_factors": best["n_factors"], "best_val_rmse": best["best_val_rmse"],
        "best_val_ndcg_at_10": best["val_ndcg_at_10"],
        "best_test_rmse": best["test_rmse"], "best_test_ndcg_at_10": best["test_ndcg_at_10"]}))
    table = "\n".join(["| n_factors | validation RMSE | validation NDCG@10 | test RMSE | test NDCG@10 | train seconds | run |",
                       "|---:|---:|---:|---:|---:|---:|---|"]
                      + [f"| {r['n_factors']}{' (best)' if r is best else ''} | {r['best_val_rmse']:.4f} | "
                         f"{r['val_ndcg_at_10']:.4f} | {r['test_rmse']:.4f} | {r['test_ndcg_at_10']:.4f} | "
                         f"{r['train_seconds']:.2f} | {r['run_id']} |"
                         for r in sorted(rows, key=lambda r: r["n_factors"])])
    mlflow.log_text(table + "\n", "sweep/results.md")
    with tempfile.TemporaryDirectory(prefix="mfrec-sweep-") as tmp:
        split = config.prepare.split
        sweep_png(rows, Path(tmp) / "metrics_by_n_factors.png",
                  f"{config.prepare.dataset} ({split.method} split, seed {split.seed}), reg {config.train.reg}")
        mlflow.log_artifact(str(Path(tmp) / "metrics_by_n_factors.png"), "sweep")
    best_run = results[best["n_factors"]]
    log_inputs(results[best["n_factors"]]["inputs"])
    registered = register(results[best["n_factors"]], config.model_name)
    mlflow.set_tags({"mfrec.best_n_factors": str(best["n_factors"]),
                     "mfrec.registered_version": str(registered["version"]),
                     "mlflow.note.content": (
                         f"Sweep over n_factors {', '.join(map(str, factors))} on {config.prepare.dataset} "
                         f"(reg {config.train.reg}). Best by {criterion}: k={best['n_factors']} "
                         f"({best_run['settings']}; validation RMSE {best['best_val_rmse']:.4f}, "
                         f"NDCG@10 {best['val_ndcg_at_10']:.4f}; test RMSE {best['test_rmse']:.4f}, "
                         f"NDCG@10 {best['test_ndcg_at_10']:.4f}); its model is version {registered['version']} "
                         f"of {config.model_name} ({registered['decision']}). Table and plot under sweep/.")})
    return {"runs": {r["n_factors"]: r["run_id"] for r in rows}, "table": table, "best": best,
            "registered": registered, "criterion": criterion}


def main(argv=None) -> int:
    tracking.fail_on_termination()
    args = parser_for("python -m entrypoints.sweep", __doc__.split("\n\n")[0], DEFAULTS).parse_args(argv)
    values = {k: getattr(args, k) for k in DEFAULTS}
    try:
        # Like a pipeline's name (k, settings, time, then dataset and split when not the defaults).
        name = "sweep-" + run_name(str(values["n_factors_list"]).replace(",", "-").replace(" ", ""), values["dataset"],
                                   values["split"], values["seed"], values["reg"])
        with tracking.top_level_run(run_name=name, log_system_metrics=tracking.system_metrics_available()):
            tracking.log_new_params(values)
            factors = factor_list(values["n_factors_list"])
            config = PipelineConfig.from_params({**values, "n_factors": str(factors[0])})
            result = run_sweep(config, factors)
    except MfrecError as exc:
        print(f"sweep failed: {exc}", file=sys.stderr)
        return 1
    best, registered = result["best"], result["registered"]
    summary = (f"{result['table']}\nbest n_factors by {result['criterion']}: {best['n_factors']}; registered its model as "
               f"version {registered['version']} ({registered['decision']}); the other children are not registered")
    return finish(result, args.output_json, summary)


if __name__ == "__main__":
    sys.exit(main())
