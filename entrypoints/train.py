"""MLflow entry point ``train``: fit, evaluate and log the model of a prepared dataset.

    python -m entrypoints.train --prepared <folder or runs:/.../prepared> --n-factors 8 \\
        [--solver als --epochs 40 --reg auto --implicit-weight auto --confidence auto
         --rating-weight auto --genre-weight auto --neighbour-weight auto --neighbour-reg auto
         --objective ndcg --device auto --seed 0]
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import mlflow

from entrypoints.common import NO_RATING_METRICS, finish, held_out_text, parser_for
from entrypoints.params import (HEADLINE_METRICS, TRAIN_DEFAULTS, for_prepared, parse_bool, ranking_config, search_config,
                                train_config)
from mfrec import registry, tracking
from mfrec.clustering.embeddings import write_embeddings
from mfrec.clustering.plots import learning_curve_png
from mfrec.data.prepare import load_prepared
from mfrec.errors import MfrecError
from mfrec.serving.bundle import RankingConfig
from mfrec.training.config import TrainConfig
from mfrec.training.search import SearchConfig
from mfrec.workflow import served_model, train_and_evaluate


def run_train(prepared_uri: str, config: TrainConfig, ranking: RankingConfig, refit_all: bool = True,
              metrics_run: str | None = None, log_model: bool = True, search: SearchConfig = SearchConfig()) -> dict:
    """Choose the ``auto`` settings on validation, train and evaluate on the prepared folder (or
    its artifact URI), then fit the served model (on every prepared rating with ``refit_all``),
    inside the active run; returns URIs and metrics.

    The headline metrics (per-epoch ones included) go to ``metrics_run`` when given (a
    pipeline's top-level run, so that no metric is logged twice), the rest to the active run;
    ``log_model`` logs the served model as a pyfunc here.
    """
    with tracking.active_or_new_run() as run, tempfile.TemporaryDirectory(prefix="mfrec-train-") as tmp:
        own_run = run.info.run_id
        metrics_run = metrics_run or own_run
        tracking.log_new_params({"prepared": prepared_uri, **config.as_params(), **asdict(ranking),
                                 "objective": search.objective, "search_trials": search.trials,
                                 "search_seconds": search.seconds, "refit_all": str(refit_all).lower()})
        prepared = load_prepared(tracking.resolve_local(prepared_uri, tmp))
        manifest = prepared.manifest
        config = for_prepared(config, manifest)
        log_epoch = tracking.EpochMetrics(metrics_run)
        try:
            outcome = train_and_evaluate(prepared.train, prepared.val, prepared.test, prepared.movies, config,
                                         ranking, on_epoch=log_epoch, search=search)
        except BaseException:
            with contextlib.suppress(Exception):  # the epochs so far; the training error is the news
                log_epoch.flush()
            raise
        log_epoch.flush()
        if outcome.choice is not None:
            tracking.log_choice(outcome.choice, {own_run, metrics_run})
        config = outcome.config
        served, served_seconds = served_model(outcome, prepared.train, prepared.val, prepared.test, prepared.movies,
                                              refit_all)
        served = served.with_ids(prepared.ids)  # custom data: answer with its own ids
        fit_on = served.meta["fit_on"]
        metrics = {**outcome.metrics, "served_fit_seconds": served_seconds, "served_ratings": fit_on["ratings"],
                   **({"served_sweeps": fit_on["sweeps"]} if "sweeps" in fit_on else {})}
        tracking.log_metrics_split(metrics, HEADLINE_METRICS, metrics_run, own_run)
        if config.implicit:
            mlflow.set_tag("mfrec.rating_metrics", NO_RATING_METRICS)
        mlflow.set_tags({"mfrec.device": outcome.device, "mfrec.als_solve": config.solve,
                         "mfrec.dataset": manifest.get("dataset", ""),
                         "mfrec.data_sha256": manifest.get("data_sha256", ""),
                         "mfrec.served_fit_on": describe_fit(fit_on)})
        out = Path(tmp)
        served.save(out / "recommender")
        mlflow.log_artifacts(str(out / "recommender"), "recommender")
        write_embeddings(served, out / "embeddings")
        mlflow.log_artifacts(str(out / "embeddings"), "embeddings")
        split = manifest.get("split", {})
        title = (f"k={config.n_factors} {config.solver}, {manifest.get('dataset', '')} "
                 f"({split.get('method', '?')} split, seed {split.get('seed', '?')})")
        learning_curve_png(outcome.history, out / "learning_curve.png", title)
        mlflow.log_artifact(str(out / "learning_curve.png"), "plots")
        model_uri = registry.log_pyfunc(out / "recommender", model_name(config, manifest)).model_uri if log_model else None
        run_id = run.info.run_id
    return {
        "run_id": run_id,
        "model_uri": model_uri,
        "learning_curve_uri": f"runs:/{run_id}/plots/learning_curve.png",
        "recommender": served,
        "embeddings_uri": f"runs:/{run_id}/embeddings",
        "data_sha256": manifest.get("data_sha256", ""),
        "prepare_key": manifest.get("prepare_key", ""),
        "device": outcome.device,
        "history": outcome.history,
        "manifest": manifest,
        "metrics": metrics,
        "fit_on": fit_on,
        "config": config,
        "ranking": outcome.ranking,
        "choice": outcome.choice,
    }


def model_name(config: TrainConfig, manifest: dict) -> str:
    """A logged model's name: what it is and what it learned from."""
    reg = f"{config.reg:g}".replace(".", "p")  # a logged model's name may hold no dot
    return f"mfrec-k{config.n_factors}-reg{reg}-{config.solver}-{manifest.get('dataset', 'data')}"


def describe_fit(fit_on: dict) -> str:
    """What a served model was fit on, in words."""
    if fit_on["refit_all"]:
        how = ""
        if "sweeps" in fit_on:
            how = (f", {fit_on['sweeps']} sweep{'s' if fit_on['sweeps'] != 1 else ''} "
                   f"{'on from the evaluated model' if fit_on.get('continued') else 'from scratch'}")
        return f"all {fit_on['ratings']:,} prepared ratings (train + validation + test{how})"
    return f"train + validation, {fit_on['ratings']:,} ratings (the held-out model; refit_all=false)"


def main(argv=None) -> int:
    tracking.fail_on_termination()
    defaults = {"prepared": "", **TRAIN_DEFAULTS}
    args = parser_for("python -m entrypoints.train", __doc__.split("\n\n")[0], defaults).parse_args(argv)
    values = {k: getattr(args, k) for k in defaults}
    try:
        if not values["prepared"]:
            raise MfrecError("parameter prepared is required: a prepared folder or its MLflow artifact URI")
        # Named like main's runs (a standalone step otherwise gets a random name).
        with tracking.top_level_run(run_name=f"train-k{values['n_factors']}-{values['solver']}-s{values['seed']}"):
            tracking.log_new_params(values)  # as received, like `mlflow run` logs them
            result = run_train(values["prepared"], train_config(values), ranking_config(values),
                               parse_bool("refit_all", values["refit_all"]), search=search_config(values))
    except MfrecError as exc:
        print(f"train failed: {exc}", file=sys.stderr)
        return 1
    m, choice = result["metrics"], result["choice"]
    summary = (f"{held_out_text(m)} "
               f"train_seconds={m['train_seconds']:.2f} device={result['device']}\n"
               f"model fit on {describe_fit(result['fit_on'])}")
    if choice is not None:
        summary = f"{choice.table()}\n{choice.summary()}\n{summary}"
    result = {k: v for k, v in result.items() if k not in ("recommender", "config", "ranking", "choice")}  # JSON
    return finish(result, args.output_json, summary)


if __name__ == "__main__":
    sys.exit(main())
