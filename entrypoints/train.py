"""MLflow entry point ``train``: fit, evaluate and log the model of a prepared dataset.

    python -m entrypoints.train --prepared <folder or runs:/.../prepared> --n-factors 8 \\
        [--solver als --epochs 40 --reg 2.5 --implicit-weight 2 --confidence 5 --genre-weight 0.1
         --device auto --seed 0]
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import mlflow

from entrypoints.common import active_or_new_run, finish, parse_number, parser_for, fail_on_termination, top_level_run
from mfrec import tracking
from mfrec.embeddings import write_embeddings
from mfrec.errors import MfrecError
from mfrec.plots import learning_curve_png
from mfrec.prepare import load_prepared
from mfrec.train import TrainConfig
from mfrec.workflow import train_and_evaluate

_TC = TrainConfig()
DEFAULTS = {
    "prepared": "", "n_factors": str(_TC.n_factors), "solver": _TC.solver, "epochs": str(_TC.epochs),
    "batch_size": str(_TC.batch_size), "lr": str(_TC.lr), "reg": str(_TC.reg),
    "implicit_weight": str(_TC.implicit_weight), "confidence": str(_TC.confidence),
    "genre_weight": str(_TC.genre_weight), "device": _TC.device, "seed": str(_TC.seed),
}
NUMBERS = {"n_factors": int, "epochs": int, "batch_size": int, "lr": float, "reg": float,
           "implicit_weight": float, "confidence": float, "genre_weight": float, "seed": int}


def config_from(values: dict, progress=None) -> TrainConfig:
    numbers = {k: parse_number(k, values[k], kind) for k, kind in NUMBERS.items()}
    return TrainConfig(**numbers, solver=values["solver"], device=values["device"], progress=progress)


def run_train(args: dict, progress=None) -> dict:
    """Train on ``args['prepared']`` inside the active run; returns URIs and metrics."""
    values = {k: args.get(k) if args.get(k) not in (None,) else d for k, d in DEFAULTS.items()}
    if not values["prepared"]:
        raise MfrecError("parameter prepared is required: a prepared folder or its MLflow artifact URI")
    with active_or_new_run() as run, tempfile.TemporaryDirectory(prefix="mfrec-train-") as tmp:
        tracking.log_new_params(values)
        config = config_from(values, progress)
        config.validate()
        prepared = load_prepared(tracking.resolve_local(values["prepared"], tmp))
        manifest = prepared.manifest
        config.rating_range = tuple(manifest.get("rating_scale", config.rating_range))

        log_epoch = tracking.EpochMetrics(run.info.run_id)
        try:
            outcome = train_and_evaluate(prepared.train, prepared.val, prepared.test, prepared.movies, config,
                                         on_epoch=log_epoch)
        except BaseException:
            with contextlib.suppress(Exception):  # the epochs so far; the training error is the news
                log_epoch.flush()
            raise
        log_epoch.flush()
        mlflow.log_metrics(tracking.finite_metrics(outcome.metrics))
        mlflow.set_tags({"mfrec.device": outcome.device,
                         "mfrec.dataset": manifest.get("dataset", ""),
                         "mfrec.data_sha256": manifest.get("data_sha256", "")})
        out = Path(tmp)
        outcome.recommender.save(out / "recommender")
        mlflow.log_artifacts(str(out / "recommender"), "recommender")
        write_embeddings(outcome.recommender, out / "embeddings")
        mlflow.log_artifacts(str(out / "embeddings"), "embeddings")
        learning_curve_png(outcome.history, out / "learning_curve.png")
        mlflow.log_artifact(str(out / "learning_curve.png"), "plots")
        model = tracking.log_pyfunc(out / "recommender")
        run_id = run.info.run_id
    return {
        "run_id": run_id,
        "model_uri": model.model_uri,
        "recommender_uri": f"runs:/{run_id}/recommender",
        "embeddings_uri": f"runs:/{run_id}/embeddings",
        "data_sha256": manifest.get("data_sha256", ""),
        "prepare_key": manifest.get("prepare_key", ""),
        "device": outcome.device,
        "history": outcome.history,
        "metrics": outcome.metrics,
    }


def main(argv=None) -> int:
    fail_on_termination()
    args = parser_for("python -m entrypoints.train", __doc__.split("\n\n")[0], DEFAULTS).parse_args(argv)
    values = {k: getattr(args, k) for k in DEFAULTS}
    try:
        # Named like main's runs (a standalone step otherwise gets a random name).
        with top_level_run(run_name=f"train-k{values['n_factors']}-{values['solver']}-s{values['seed']}"):
            result = run_train(values)
    except MfrecError as exc:
        print(f"train failed: {exc}", file=sys.stderr)
        return 1
    m = result["metrics"]
    return finish(result, args.output_json,
                  f"test_rmse={m['test_rmse']:.4f} test_ndcg_at_10={m['test_ndcg_at_10']:.4f} "
                  f"train_seconds={m['train_seconds']:.2f} device={result['device']}")


if __name__ == "__main__":
    sys.exit(main())
