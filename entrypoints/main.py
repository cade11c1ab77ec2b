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

from entrypoints.cluster import run_cluster
from entrypoints.common import finish, parser_for
from entrypoints.params import PIPELINE_DEFAULTS, PipelineConfig, run_name
from entrypoints.prepare import run_prepare
from entrypoints.train import describe_fit, run_train
from mfrec import tracking
from mfrec.errors import MfrecError
from mfrec.serving.recommender import Recommender

# Metrics the top-level run repeats from its steps (the README's "What a run logs").
HEADLINE_PREFIXES = ("test_", "baseline_", "cluster_", "train_seconds", "epochs_run", "best_")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_pipeline(config: PipelineConfig, progress=None) -> dict:
    """Run all steps under the active run (which becomes their parent)."""
    parent = mlflow.active_run()
    tracking.log_new_params(config.params())
    tags = {"mfrec.dataset": config.prepare.dataset}
    commit = git_commit()
    if commit:
        tags["mfrec.git_commit"] = commit
    mlflow.set_tags(tags)

    with mlflow.start_run(run_name="prepare", nested=True):
        prepared = run_prepare(config.prepare, progress=bool(progress))
    if prepared["reused_from"]:
        mlflow.set_tag("mfrec.prepare_reused_from", prepared["reused_from"])

    with mlflow.start_run(run_name="train", nested=True):
        trained = run_train(prepared["prepared_uri"], config.train, config.ranking, config.refit_all)
    to_parent = tracking.EpochMetrics(parent.info.run_id, interval=float("inf"))
    for record in trained["history"]:
        to_parent(record)
    to_parent.flush()
    fit_on = describe_fit(trained["fit_on"])
    mlflow.set_tags({"mfrec.device": trained["device"], "mfrec.served_fit_on": fit_on})

    with tempfile.TemporaryDirectory(prefix="mfrec-register-") as tmp:
        with mlflow.start_run(run_name="cluster", nested=True):
            clustered = run_cluster(trained["embeddings_uri"], config.cluster, out_dir=Path(tmp) / "cluster")
        headline = {**trained["metrics"], **clustered["metrics"]}
        mlflow.log_metrics(tracking.finite_metrics(
            {k: v for k, v in headline.items() if k.startswith(HEADLINE_PREFIXES)}))
        rec = Recommender.load(tracking.resolve_local(trained["recommender_uri"], tmp))
        folder = Path(tmp) / "served"
        rec.with_clusters(clustered["assignments"]).save(folder)
        for artifact in (clustered["report_path"], clustered["plot_path"]):
            mlflow.log_artifact(str(artifact), "clusters")
        model = tracking.log_pyfunc(folder)
    m, split = trained["metrics"], config.prepare.split
    description = (f"mfrec k={config.train.n_factors} ({config.train.solver}) on {config.prepare.dataset}. "
                   f"Held-out evaluation ({split.method} split, seed {split.seed}, {split.test_fraction:.0%} test): "
                   f"test RMSE {m['test_rmse']:.4f}, NDCG@10 {m['test_ndcg_at_10']:.4f}. "
                   f"The served model is fit on {fit_on} with that recipe.")
    decision = tracking.register(model.model_uri, config.model_name, m["test_rmse"], trained["prepare_key"],
                                 parent.info.run_id, trained["data_sha256"], description=description,
                                 tags={"fit_on": fit_on})
    return {"run_id": parent.info.run_id, "model_uri": model.model_uri, "registered": decision,
            "metrics": headline, "prepared_uri": prepared["prepared_uri"], "fit_on": fit_on}


def main(argv=None) -> int:
    tracking.fail_on_termination()
    args = parser_for("python -m entrypoints.main", __doc__.split("\n\n")[0], PIPELINE_DEFAULTS).parse_args(argv)
    values = {k: getattr(args, k) for k in PIPELINE_DEFAULTS}
    try:
        name = run_name(values["n_factors"], values["dataset"], values["split"], values["seed"])
        with tracking.top_level_run(run_name=name, log_system_metrics=tracking.system_metrics_available()):
            tracking.log_new_params(values)
            config = PipelineConfig.from_params(values)  # every parameter checked before the first step
            result = run_pipeline(config)
    except MfrecError as exc:
        print(f"pipeline failed: {exc}", file=sys.stderr)
        return 1
    m = result["metrics"]
    return finish(result, args.output_json,
                  f"test_rmse={m['test_rmse']:.4f} test_ndcg_at_10={m['test_ndcg_at_10']:.4f} "
                  f"cluster_genre_purity={m.get('cluster_genre_purity', float('nan')):.3f} (held-out evaluation)\n"
                  f"served model: fit on {result['fit_on']}; registered version "
                  f"{result['registered']['version']}, {result['registered']['decision']}")


if __name__ == "__main__":
    sys.exit(main())
