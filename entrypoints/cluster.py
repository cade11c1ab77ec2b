"""MLflow entry point ``cluster``: KMeans on a run's movie embeddings, with report and plot.

    python -m entrypoints.cluster --embeddings <folder or runs:/<id>/embeddings> \\
        [--n-clusters 10 --seed 0 --normalize true --min-ratings 10]

Logs ``cluster_silhouette``, ``cluster_inertia``, ``cluster_genre_purity`` and
``cluster_genre_purity_shuffled`` and the artifacts ``clusters/assignments.parquet``,
``clusters/report.md`` and ``clusters/clusters.png`` to the active run (``mlflow run`` made
one; ``main`` opens a nested one) or to a new run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import mlflow

from entrypoints.common import (active_or_new_run, at_least, fail_on_termination, finish, parse_bool, parse_number,
                                parser_for, top_level_run)
from mfrec import cluster as clustering
from mfrec import tracking
from mfrec.embeddings import read_item_embeddings
from mfrec.errors import ConfigError, MfrecError
from mfrec.plots import clusters_png
from mfrec.report import cluster_report_markdown

DEFAULTS = {
    "embeddings": "", "n_clusters": str(clustering.DEFAULT_N_CLUSTERS), "seed": "0",
    "normalize": str(clustering.DEFAULT_NORMALIZE).lower(), "min_ratings": str(clustering.DEFAULT_MIN_RATINGS),
    "n_init": str(clustering.DEFAULT_N_INIT),
}
ARTIFACT_DIR = "clusters"


def write_outputs(result: clustering.ClusterResult, meta, vectors, folder: Path) -> dict:
    """Write assignments.parquet, report.md and clusters.png into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"assignments_path": folder / "assignments.parquet", "report_path": folder / "report.md",
             "plot_path": folder / "clusters.png"}
    tmp = paths["assignments_path"].with_name("assignments.parquet.tmp")
    result.assignments.to_parquet(tmp, index=False)
    os.replace(tmp, paths["assignments_path"])
    tmp = paths["report_path"].with_name("report.md.tmp")
    tmp.write_text(cluster_report_markdown(result, meta), encoding="utf-8")
    os.replace(tmp, paths["report_path"])
    # Only the fitted movies: the thousands of rarely-rated ones would bury the structure.
    fitted = result.assignments["fitted"].to_numpy()
    space = clustering.prepare_vectors(vectors, bool(result.params["normalize"]))
    clusters_png(space[fitted], result.assignments["cluster"].to_numpy()[fitted],
                 result.assignments["title"].to_numpy()[fitted], result.assignments["n_ratings"].to_numpy()[fitted],
                 paths["plot_path"])
    return paths


def parse_params(n_clusters=clustering.DEFAULT_N_CLUSTERS, seed=0, normalize=clustering.DEFAULT_NORMALIZE,
                 min_ratings=clustering.DEFAULT_MIN_RATINGS, n_init=clustering.DEFAULT_N_INIT) -> dict:
    """The step's parameters as numbers and bools, checked as far as they can be without the
    embeddings (``main`` calls this before its first step)."""
    values = {
        "n_clusters": parse_number("n_clusters", n_clusters, int),
        "seed": parse_number("seed", seed, int),
        "normalize": parse_bool("normalize", normalize),
        "min_ratings": parse_number("min_ratings", min_ratings, int),
        "n_init": parse_number("n_init", n_init, int),
    }
    at_least(values, {"n_clusters": 2, "min_ratings": 0, "n_init": 1})
    return values


def run_cluster(embeddings: str, n_clusters=clustering.DEFAULT_N_CLUSTERS, seed=0,
                normalize=clustering.DEFAULT_NORMALIZE, min_ratings=clustering.DEFAULT_MIN_RATINGS,
                n_init=clustering.DEFAULT_N_INIT, out_dir=None) -> dict:
    """Cluster the movie embeddings at ``embeddings`` and log everything to the active run.

    Args:
        embeddings: an ``embeddings/`` folder, its ``items.parquet``, or an MLflow artifact
            URI of either (``runs:/<id>/embeddings``).
        n_clusters, seed, normalize, min_ratings, n_init: see
            :func:`mfrec.cluster.cluster_movies`; strings as MLproject passes them are accepted.
        out_dir: where the local copies of the outputs go (a ``clusters/`` folder inside it);
            default a fresh temporary folder that is *not* deleted, so the returned paths stay
            valid: pass a folder you clean up.

    Returns:
        dict with ``run_id``, ``metrics``, ``assignments`` (DataFrame), ``assignments_path``,
        ``report_path``, ``plot_path`` (local files), ``assignments_uri`` (in the run) and
        ``params``.

    Raises:
        DataError: the embeddings are missing or malformed.
        ConfigError: a parameter is invalid (e.g. ``n_clusters`` < 2 or above the movie count).
    """
    if not str(embeddings or "").strip():
        raise ConfigError("parameter embeddings is required: an embeddings folder or its MLflow artifact URI")
    values = {"embeddings": str(embeddings), **parse_params(n_clusters, seed, normalize, min_ratings, n_init)}
    with active_or_new_run() as run:
        # Only params the run lacks: `mlflow run` already logged its own, as strings, and
        # re-logging one in another form ("10" vs 10) is an error.
        tracking.log_new_params({k: str(v).lower() if isinstance(v, bool) else v for k, v in values.items()})
        with tempfile.TemporaryDirectory(prefix="mfrec-embeddings-") as tmp:
            meta, vectors = read_item_embeddings(tracking.resolve_local(values["embeddings"], tmp))
        result = clustering.cluster_movies(meta, vectors, values["n_clusters"], values["seed"],
                                           values["normalize"], values["min_ratings"], values["n_init"])
        # Made only now, so a failure above leaves no folder behind.
        out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="mfrec-cluster-"))
        paths = write_outputs(result, meta, vectors, out / ARTIFACT_DIR)
        mlflow.log_metrics(tracking.finite_metrics(result.metrics))
        mlflow.log_artifacts(str(out / ARTIFACT_DIR), ARTIFACT_DIR)
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
    fail_on_termination()
    args = parser_for("python -m entrypoints.cluster", __doc__.split("\n\n")[0], DEFAULTS).parse_args(argv)
    values = {k: getattr(args, k) for k in DEFAULTS}
    try:
        # The local copies are only needed until they are logged.
        name = f"cluster-n{values['n_clusters']}-s{values['seed']}"  # a standalone step is otherwise named at random
        with tempfile.TemporaryDirectory(prefix="mfrec-cluster-") as tmp, top_level_run(run_name=name):
            result = run_cluster(**values, out_dir=tmp)
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
