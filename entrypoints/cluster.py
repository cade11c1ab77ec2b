"""MLflow entry point ``cluster``: KMeans on a run's movie embeddings, with report and plot.

    python -m entrypoints.cluster --embeddings <folder or runs:/<id>/embeddings> \\
        [--n-clusters 10 --seed 0 --normalize true --min-ratings 10 --n-init 10]

Logs ``cluster_silhouette``, ``cluster_inertia``, ``cluster_genre_purity`` and
``cluster_genre_purity_shuffled`` and the artifacts ``clusters/assignments.parquet``,
``clusters/report.md`` and ``clusters/clusters.png`` to the active run (``mlflow run`` made
one; ``main`` opens a nested one) or to a new run.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import mlflow

from entrypoints.common import finish, parser_for
from entrypoints.params import CLUSTER_DEFAULTS, HEADLINE_METRICS, cluster_config
from mfrec import tracking
from mfrec.clustering.embeddings import read_item_embeddings
from mfrec.clustering.kmeans import ClusterConfig, cluster_movies
from mfrec.clustering.report import write_outputs
from mfrec.errors import ConfigError, MfrecError

ARTIFACT_DIR = "clusters"


def run_cluster(embeddings: str, config: ClusterConfig, out_dir, metrics_run: str | None = None,
                title: str = "") -> dict:
    """Cluster the movie embeddings at ``embeddings`` (an ``embeddings/`` folder, its
    ``items.parquet``, or an MLflow artifact URI of either) and log everything to the active
    run (the metrics to ``metrics_run`` when given: a pipeline's top-level run); the local
    copies of the outputs go to ``out_dir/clusters``; ``title`` names the model in the plot.

    Raises:
        DataError: the embeddings are missing or malformed.
        ConfigError: ``n_clusters`` is above the number of movies to cluster.
    """
    if not str(embeddings or "").strip():
        raise ConfigError("parameter embeddings is required: an embeddings folder or its MLflow artifact URI")
    with tracking.active_or_new_run() as run:
        tracking.log_new_params({"embeddings": embeddings, **{k: str(v).lower() if isinstance(v, bool) else v
                                                              for k, v in asdict(config).items()}})
        with tempfile.TemporaryDirectory(prefix="mfrec-embeddings-") as tmp:
            meta, vectors = read_item_embeddings(tracking.resolve_local(str(embeddings), tmp))
        result = cluster_movies(meta, vectors, config)
        paths = write_outputs(result, meta, vectors, Path(out_dir) / ARTIFACT_DIR, title)
        tracking.log_metrics_split(result.metrics, HEADLINE_METRICS, metrics_run or run.info.run_id, run.info.run_id)
        mlflow.log_artifacts(str(Path(out_dir) / ARTIFACT_DIR), ARTIFACT_DIR)
        run_id = run.info.run_id
    return {
        "run_id": run_id,
        "metrics": result.metrics,
        "params": result.params,
        "assignments": result.assignments,
        "assignments_uri": f"runs:/{run_id}/{ARTIFACT_DIR}/assignments.parquet",
        **{k: str(v) for k, v in paths.items()},
    }


def main(argv=None) -> int:
    tracking.fail_on_termination()
    defaults = {"embeddings": "", **CLUSTER_DEFAULTS}
    args = parser_for("python -m entrypoints.cluster", __doc__.split("\n\n")[0], defaults).parse_args(argv)
    values = {k: getattr(args, k) for k in defaults}
    try:
        name = f"cluster-n{values['n_clusters']}-s{values['seed']}"  # a standalone step is otherwise named at random
        with tempfile.TemporaryDirectory(prefix="mfrec-cluster-") as tmp, tracking.top_level_run(run_name=name):
            tracking.log_new_params(values)  # as received, like `mlflow run` logs them
            result = run_cluster(values["embeddings"], cluster_config(values), out_dir=tmp)
    except MfrecError as exc:
        print(f"cluster failed: {exc}", file=sys.stderr)
        return 1
    m = result["metrics"]
    summary = (f"cluster_genre_purity={m['cluster_genre_purity']:.3f} "
               f"(shuffled {m['cluster_genre_purity_shuffled']:.3f}) "
               f"cluster_silhouette={m['cluster_silhouette']:.3f} run_id={result['run_id']}")
    result = {k: v for k, v in result.items() if k in ("run_id", "metrics", "params", "assignments_uri")}
    return finish(result, args.output_json, summary)


if __name__ == "__main__":
    sys.exit(main())
