"""MLflow entry point ``tune``: a budgeted search over n_factors and every ``auto`` setting.

    mlflow run . -e tune --env-manager local [-P tune_trials=60 -P tune_minutes=8 \\
        -P n_factors_list=8,16,32,64,128]

The train step's settings search (mfrec.training.search) with n_factors added: Optuna's TPE
sampler proposes each trial (the first is the starting point at n_factors 8), a trial fits
the training split (sweep count by validation RMSE) and reports its validation NDCG@10 every
sweep to Optuna's median pruner, which stops trials behind the others. Every trial is an
MLflow child run (``<tune>/trial-<n>``: its settings, validation curve and scores). The
choice follows the train step's rule (best validation NDCG@10 among trials whose RMSE is
within the tolerance of the best at their n_factors, and clearly better than the starting
point); the chosen settings then run as a complete pipeline (a child run: refit, test
evaluation, served model, clusters) and only that model is registered, the champion rule of
``main`` deciding the alias. The budget is ``tune_trials`` trials or ``tune_minutes`` of
searching, whichever ends first; the final pipeline runs after it.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from dataclasses import replace

import mlflow

from entrypoints.common import finish, parser_for
from entrypoints.main import register, run_pipeline
from entrypoints.params import PIPELINE_DEFAULTS, PipelineConfig, for_prepared, parse_number
from entrypoints.prepare import log_inputs, run_prepare
from entrypoints.sweep import factor_list
from mfrec import tracking
from mfrec.data.prepare import load_prepared
from mfrec.errors import ConfigError, MfrecError
from mfrec.training.search import Choice, choose

DEFAULTS = {**{k: v for k, v in PIPELINE_DEFAULTS.items() if k not in ("n_factors", "search_trials", "search_seconds")},
            "n_factors_list": "8,16,32,64,128", "tune_trials": "60", "tune_minutes": "8"}


def run_tune(config: PipelineConfig, factors: list[int], progress=None) -> dict:
    """Prepare, search (one child run per trial), then run and register the chosen pipeline,
    all under the active run."""
    parent = mlflow.active_run()
    name = mlflow.get_run(parent.info.run_id).info.run_name
    with mlflow.start_run(run_name=f"{name}/prepare", nested=True):
        prepared = run_prepare(config.prepare, progress=bool(progress))
    log_inputs(prepared["inputs"])
    with tempfile.TemporaryDirectory(prefix="mfrec-tune-") as tmp:
        data = load_prepared(tracking.resolve_local(prepared["prepared_uri"], tmp))
        train = for_prepared(config.train, data.manifest)
        choice = choose(data.train, data.val, data.movies, train, config.ranking, config.search,
                        space={"n_factors": factors}, on_trial=lambda row, _: _log_trial(name, row), curve=True)
    tracking.log_choice(choice, [parent.info.run_id])
    chosen = replace(config, train=choice.config, ranking=choice.ranking)
    with mlflow.start_run(run_name=f"{name}/best-{chosen.run_name()}", nested=True):
        result = run_pipeline(chosen, progress=progress)
    registered = register(result, config.model_name)
    m = result["metrics"]
    mlflow.log_metrics(tracking.finite_metrics({"best_n_factors": choice.config.n_factors, "best_val_ndcg_at_10": choice.best["val_ndcg_at_10"],
                        "best_val_rmse": choice.best["val_rmse"], "best_test_ndcg_at_10": m["test_ndcg_at_10"],
                        "best_test_rmse": m["test_rmse"], "tune_trials_run": len(choice.trials),
                        "tune_seconds": choice.seconds}))
    mlflow.set_tags({"mfrec.best_n_factors": str(choice.config.n_factors),
                     "mfrec.registered_version": str(registered["version"]),
                     "mlflow.note.content": (
                         f"Tuning on {config.prepare.dataset} ({len(choice.trials)} trials, n_factors "
                         f"{', '.join(map(str, factors))}; objective {config.search.objective}). {choice.summary()}. "
                         f"The chosen pipeline scored test RMSE {m['test_rmse']:.4f}, NDCG@10 "
                         f"{m['test_ndcg_at_10']:.4f}; its model is version {registered['version']} of "
                         f"{config.model_name} ({registered['decision']}). Trials under search/trials.md.")})
    return {"choice": choice, "pipeline": result, "registered": registered}


def _log_trial(tune_name: str, row: dict) -> None:
    """One trial as a child run: its settings, validation curve and scores."""
    with mlflow.start_run(run_name=f"{tune_name}/trial-{row['trial']}", nested=True) as run:
        mlflow.log_params({k: v for k, v in row["params"].items()})
        history = row.get("_history", [])
        with contextlib.suppress(Exception):  # a trial's log is informative, the search goes on
            log = tracking.EpochMetrics(run.info.run_id)
            for record in history:
                log({k: v for k, v in record.items() if k in ("epoch", "train_loss", "val_rmse", "val_ndcg_at_10")})
            log.flush()
        final = {k: row[k] for k in ("val_rmse", "val_ndcg_at_10", "best_epoch") if k in row}
        mlflow.log_metrics(tracking.finite_metrics({**{f"final_{k}": v for k, v in final.items()},
                                                    "trial_seconds": row["seconds"], "sweeps_run": len(history)}))
        mlflow.set_tag("mfrec.trial_state", row["state"])


def main(argv=None) -> int:
    tracking.fail_on_termination()
    args = parser_for("python -m entrypoints.tune", __doc__.split("\n\n")[0], DEFAULTS).parse_args(argv)
    values = {k: getattr(args, k) for k in DEFAULTS}
    try:
        name = f"tune-{values['dataset']}-{time.strftime('%m%d-%H%M%S')}"
        with tracking.top_level_run(run_name=name, log_system_metrics=tracking.system_metrics_available()):
            tracking.log_new_params(values)
            factors = factor_list(values["n_factors_list"])
            trials = parse_number("tune_trials", values["tune_trials"], int)
            minutes = parse_number("tune_minutes", values["tune_minutes"], float)
            if not minutes > 0:
                raise ConfigError(f"parameter tune_minutes must be > 0, got {values['tune_minutes']!r}")
            config = PipelineConfig.from_params({**values, "n_factors": str(min(factors, key=lambda k: abs(k - 8))),
                                                 "search_trials": str(trials), "search_seconds": str(minutes * 60)})
            result = run_tune(config, factors)
    except MfrecError as exc:
        print(f"tune failed: {exc}", file=sys.stderr)
        return 1
    choice: Choice = result["choice"]
    m, registered = result["pipeline"]["metrics"], result["registered"]
    summary = (f"{choice.table()}\n{choice.summary()}\nchosen pipeline: test_rmse={m['test_rmse']:.4f} "
               f"test_ndcg_at_10={m['test_ndcg_at_10']:.4f}; registered its model as version {registered['version']} "
               f"({registered['decision']}); no other trial is registered")
    payload = {"trials": choice.rows(), "chosen": choice.chosen(), "summary": choice.summary(),
               "test_rmse": m["test_rmse"], "test_ndcg_at_10": m["test_ndcg_at_10"], "registered": registered}
    return finish(payload, args.output_json, summary)


if __name__ == "__main__":
    sys.exit(main())
