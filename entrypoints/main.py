"""MLflow entry point ``main``: prepare → train → cluster → register, as nested child runs.

The top-level run carries every parameter and the headline metrics, so the runs table
compares invocations directly. Any failing step fails the whole run and registers nothing.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow

from entrypoints import cluster as cluster_step
from entrypoints import prepare as prepare_step
from entrypoints import train as train_step
from entrypoints.common import finish, parser_for, system_metrics_available, fail_on_termination, top_level_run
from mfrec import tracking
from mfrec.device import resolve_device
from mfrec.errors import MfrecError
from mfrec.recommender import Recommender

DEFAULTS = {**prepare_step.DEFAULTS, **{k: v for k, v in train_step.DEFAULTS.items() if k != "prepared"},
            "n_clusters": "10", "model_name": "mfrec"}
# Metrics the top-level run repeats from its steps (the README's "What a run logs").
HEADLINE_PREFIXES = ("test_", "baseline_", "cluster_", "train_seconds", "epochs_run", "best_")


def run_name(values: dict) -> str:
    return f"mf-k{values['n_factors']}-{values['dataset']}-{values['split']}-s{values['seed']}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def check_params(values: dict) -> None:
    """Refuse a bad parameter of any step before the first step runs (a bad ``n_clusters``
    surfaced only after training, a bad ``n_factors`` after preparing)."""
    config = train_step.config_from(values)
    config.validate()
    resolve_device(config.device, needs_sparse=config.solver == "als")
    cluster_step.parse_params(values["n_clusters"], values["seed"])


def run_pipeline(values: dict, progress=None) -> dict:
    """Run all steps under the active run (which becomes their parent)."""
    parent = mlflow.active_run()
    tracking.log_new_params(values)
    tags = {"mlflow.runName": run_name(values), "mfrec.dataset": values["dataset"]}
    commit = git_commit()
    if commit:
        tags["mfrec.git_commit"] = commit
    mlflow.set_tags(tags)
    check_params(values)

    with mlflow.start_run(run_name="prepare", nested=True):
        prepared = prepare_step.run_prepare({k: values[k] for k in prepare_step.DEFAULTS}, progress=bool(progress))
    if prepared["reused_from"]:
        mlflow.set_tag("mfrec.prepare_reused_from", prepared["reused_from"])

    train_args = {k: values[k] for k in train_step.DEFAULTS if k != "prepared"}
    with mlflow.start_run(run_name="train", nested=True):
        trained = train_step.run_train({**train_args, "prepared": prepared["prepared_uri"]}, progress=progress)
    to_parent = tracking.EpochMetrics(parent.info.run_id, interval=float("inf"))
    for record in trained["history"]:
        to_parent(record)
    to_parent.flush()
    mlflow.set_tags({"mfrec.device": trained["device"]})

    with tempfile.TemporaryDirectory(prefix="mfrec-register-") as tmp:
        with mlflow.start_run(run_name="cluster", nested=True):
            clustered = cluster_step.run_cluster(trained["embeddings_uri"], values["n_clusters"], values["seed"],
                                                 out_dir=Path(tmp) / "cluster")
        headline = {**trained["metrics"], **clustered["metrics"]}
        mlflow.log_metrics(tracking.finite_metrics(
            {k: v for k, v in headline.items() if k.startswith(HEADLINE_PREFIXES)}))
        rec = Recommender.load(tracking.resolve_local(trained["recommender_uri"], tmp))
        rec.set_clusters(clustered["assignments"])
        folder = Path(tmp) / "served"
        rec.save(folder)
        for artifact, sub in ((clustered["report_path"], "clusters"), (clustered["plot_path"], "clusters")):
            mlflow.log_artifact(str(artifact), sub)
        model = tracking.log_pyfunc(folder)
    decision = tracking.register(model.model_uri, values["model_name"], trained["metrics"]["test_rmse"],
                                 trained["prepare_key"], parent.info.run_id, trained["data_sha256"])
    return {"run_id": parent.info.run_id, "model_uri": model.model_uri, "registered": decision,
            "metrics": headline, "prepared_uri": prepared["prepared_uri"]}


def main(argv=None) -> int:
    fail_on_termination()
    args = parser_for("python -m entrypoints.main", __doc__.split("\n\n")[0], DEFAULTS).parse_args(argv)
    values = {k: getattr(args, k) for k in DEFAULTS}
    try:
        with top_level_run(log_system_metrics=system_metrics_available()):
            result = run_pipeline(values)
    except MfrecError as exc:
        print(f"pipeline failed: {exc}", file=sys.stderr)
        return 1
    m = result["metrics"]
    return finish(result, args.output_json,
                  f"test_rmse={m['test_rmse']:.4f} test_ndcg_at_10={m['test_ndcg_at_10']:.4f} "
                  f"cluster_genre_purity={m.get('cluster_genre_purity', float('nan')):.3f} "
                  f"registered: {result['registered']['decision']}")


if __name__ == "__main__":
    sys.exit(main())
