"""MLflow entry point ``main``: prepare → train → cluster → register, as nested child runs.

The top-level run carries every parameter and the headline metrics, so the runs table
compares invocations directly. Any failing step fails the whole run and registers nothing.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

from entrypoints.cluster import run_cluster
from entrypoints.common import NO_RATING_METRICS, finish, held_out_text, parser_for
from entrypoints.params import PIPELINE_DEFAULTS, PipelineConfig, run_name
from entrypoints.prepare import log_inputs, run_prepare
from entrypoints.train import describe_fit, model_name, run_train
from mfrec import registry, tracking
from mfrec.errors import MfrecError

def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_pipeline(config: PipelineConfig, progress=None) -> dict:
    """Run all steps under the active run, which becomes their parent and carries the
    pipeline's parameters, headline metrics, dataset inputs, plots, description and model.
    Each step's own run (``<name>/prepare``, ``/train``, ``/cluster``) keeps its parameters,
    artifacts and the metrics that are only its own."""
    parent = mlflow.active_run()
    pid, name = parent.info.run_id, mlflow.get_run(parent.info.run_id).info.run_name
    tracking.log_new_params(config.params())
    split = config.prepare.split
    tags = {"mfrec.dataset": config.prepare.dataset, "mfrec.split": f"{split.method}-s{split.seed}",
            "mfrec.n_factors": str(config.train.n_factors), "mfrec.solver": config.train.solver,
            "mfrec.als_solve": config.train.solve}
    commit = git_commit()
    if commit:
        tags["mfrec.git_commit"] = commit
    mlflow.set_tags(tags)
    # The UI then opens the experiment on its training runs, not the GenAI overview.
    experiment = mlflow.get_experiment(parent.info.experiment_id)
    if "mlflow.experimentKind" not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind",
                                                 "custom_model_development")

    began = time.perf_counter()
    with mlflow.start_run(run_name=f"{name}/prepare", nested=True):
        prepared = run_prepare(config.prepare, progress=bool(progress))
    phases = {"prepare_seconds": time.perf_counter() - began}
    if prepared["reused_from"]:
        mlflow.set_tag("mfrec.prepare_reused_from", prepared["reused_from"])
    log_inputs(prepared["inputs"])

    training = time.perf_counter()
    with mlflow.start_run(run_name=f"{name}/train", nested=True):
        trained = run_train(prepared["prepared_uri"], config.train, config.ranking, config.refit_all,
                            metrics_run=pid, log_model=False, search=config.search)
    chosen = trained["config"]  # every "auto" setting chosen on validation
    fit_on = describe_fit(trained["fit_on"])
    mlflow.set_tags({"mfrec.device": trained["device"], "mfrec.served_fit_on": fit_on})
    if chosen.implicit:  # where people compare runs, why this one has no RMSE
        mlflow.set_tag("mfrec.rating_metrics", NO_RATING_METRICS)
    m = trained["metrics"]
    title = (f"k={config.train.n_factors} {config.train.solver}, {config.prepare.dataset} "
             f"({split.method} split, seed {split.seed}), served model")

    phases["train_step_seconds"] = time.perf_counter() - training
    with tempfile.TemporaryDirectory(prefix="mfrec-register-") as tmp:
        mlflow.log_artifact(str(tracking.resolve_local(trained["learning_curve_uri"], tmp)), "plots")
        clustering = time.perf_counter()
        with mlflow.start_run(run_name=f"{name}/cluster", nested=True):
            clustered = run_cluster(trained["embeddings_uri"], config.cluster, Path(tmp) / "cluster",
                                    metrics_run=pid, title=title)
        phases["cluster_seconds"] = time.perf_counter() - clustering
        for artifact in (clustered["report_path"], clustered["plot_path"]):
            mlflow.log_artifact(str(artifact), "clusters")
        folder = Path(tmp) / "served"
        trained["recommender"].with_clusters(clustered["assignments"]).save(folder)
        model = registry.log_pyfunc(folder, model_name(chosen, trained["manifest"]))
    held_out = {k: m[k] for k in registry.CHAMPION_METRICS}
    rmse = m["test_rmse"]
    c = clustered["metrics"]
    choice = trained["choice"]
    settings = (f"reg {chosen.reg:g}, implicit_weight {chosen.implicit_weight:g}, confidence {chosen.confidence:g}, "
                f"rating_weight {trained['ranking'].rating_weight:g}, genre_weight {trained['ranking'].genre_weight:g}, "
                f"neighbour_weight {trained['ranking'].neighbour_weight:g}")
    description = (f"mfrec k={config.train.n_factors} ({config.train.solver}, {chosen.solve} solve; {settings}"
                   f"{', chosen on validation (search/trials.md)' if choice is not None else ''}) on "
                   f"{config.prepare.dataset}. Held-out evaluation ({split.method} split, seed {split.seed}, "
                   f"{split.test_fraction:.0%} test): "
                   f"{f'test RMSE {rmse:.4f}, ' if rmse == rmse else 'no test RMSE (implicit feedback), '}"
                   f"NDCG@10 {m['test_ndcg_at_10']:.4f} (popularity {m['baseline_popularity_ndcg_at_10']:.4f}). "
                   f"The served model is fit on {fit_on} with that recipe.")
    mlflow.set_tag("mlflow.note.content", description + (
        f" Clusters: genre purity {c['cluster_genre_purity']:.3f} against {c['cluster_genre_purity_shuffled']:.3f} "
        f"shuffled. Training took {m['train_seconds']:.2f} s."))
    registration = {"model_uri": model.model_uri, "held_out": held_out, "prepare_key": trained["prepare_key"],
                    "run_id": pid, "data_sha256": trained["data_sha256"], "description": description,
                    "tags": {"fit_on": fit_on}, "metric": config.champion_metric}
    return {"run_id": pid, "model_uri": model.model_uri, "metrics": {**m, **c}, "registration": registration,
            "phases": phases,
            "prepared_uri": prepared["prepared_uri"], "inputs": prepared["inputs"], "fit_on": fit_on,
            "settings": settings, "choice": choice.summary() if choice is not None else None}


def register(result: dict, model_name: str) -> dict:
    """Register a pipeline's model as a new version of ``model_name`` (the champion rule in
    :func:`mfrec.registry.register`)."""
    r = result["registration"]
    return registry.register(r["model_uri"], model_name, r["held_out"], r["prepare_key"], r["run_id"],
                             r["data_sha256"], description=r["description"], tags=r["tags"], metric=r["metric"])


def main(argv=None) -> int:
    tracking.fail_on_termination()
    args = parser_for("python -m entrypoints.main", __doc__.split("\n\n")[0], PIPELINE_DEFAULTS).parse_args(argv)
    values = {k: getattr(args, k) for k in PIPELINE_DEFAULTS}
    try:
        name = run_name(values["n_factors"], values["dataset"], values["split"], values["seed"], values["reg"])
        with tracking.top_level_run(run_name=name, log_system_metrics=tracking.system_metrics_available()):
            tracking.log_new_params(values)
            config = PipelineConfig.from_params(values)  # every parameter checked before the first step
            started = time.perf_counter()
            result = run_pipeline(config)
            registering = time.perf_counter()
            result["registered"] = register(result, config.model_name)
            phases = result["phases"]
            phases["register_seconds"] = time.perf_counter() - registering
            phases["pipeline_seconds"] = time.perf_counter() - started
            mlflow.log_metrics(phases)
    except MfrecError as exc:
        print(f"pipeline failed: {exc}", file=sys.stderr)
        return 1
    m = result["metrics"]
    return finish(result, args.output_json,
                  (f"{result['choice']}\n" if result["choice"] else "") +
                  f"{held_out_text(m)} "
                  f"cluster_genre_purity={m.get('cluster_genre_purity', float('nan')):.3f} (held-out evaluation)\n"
                  f"served model: fit on {result['fit_on']}; registered version "
                  f"{result['registered']['version']}, {result['registered']['decision']}\n"
                  f"{phase_text(m, result['phases'])}")


def phase_text(metrics: dict, phases: dict) -> str:
    """Where the pipeline's time went, in one line (each figure is also a metric of the run)."""
    parts = [("prepare", phases["prepare_seconds"]), ("settings search", metrics.get("search_seconds")),
             ("sweep count", metrics.get("select_seconds")), ("refit", metrics.get("refit_seconds")),
             ("evaluate", metrics.get("evaluate_seconds")), ("served refit", metrics.get("served_fit_seconds")),
             ("cluster", phases["cluster_seconds"]), ("register", phases["register_seconds"])]
    parts = [(name, seconds) for name, seconds in parts if seconds is not None and seconds == seconds]
    # The rest: loading the prepared split, artifacts, plots and the logged model.
    parts.append(("logging", phases["pipeline_seconds"] - sum(seconds for _, seconds in parts)))
    named = ", ".join(f"{name} {seconds:.1f}" for name, seconds in parts)
    return f"seconds: {named}; all {phases['pipeline_seconds']:.1f}"


if __name__ == "__main__":
    sys.exit(main())
