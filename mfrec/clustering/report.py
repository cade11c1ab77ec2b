"""The cluster step's outputs: a markdown summary (``clusters/report.md``), assignments and plot."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from mfrec.clustering.kmeans import ClusterResult, prepare_vectors, top_genres
from mfrec.clustering.plots import clusters_png

N_TOP_MOVIES = 10
N_TOP_GENRES = 3


def _cell(text) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _genres_cell(genres: str) -> str:
    return _cell(", ".join(g for g in str(genres).split("|") if g))


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _with_counts(result: ClusterResult, items: pd.DataFrame | None) -> pd.DataFrame:
    """Assignments with n_ratings (and title/genres) taken from ``items`` where it has them."""
    frame = result.assignments.copy()
    if items is None:
        return frame
    cols = [c for c in ("title", "genres", "n_ratings") if c in items.columns]
    extra = items[["movieId", *cols]].drop_duplicates("movieId")
    frame = frame.drop(columns=[c for c in cols if c in frame.columns]).merge(extra, on="movieId", how="left")
    frame["n_ratings"] = frame["n_ratings"].fillna(0).astype(np.int64)
    frame["title"] = frame["title"].fillna("")
    frame["genres"] = frame["genres"].fillna("")
    return frame


def summary_lines(result: ClusterResult) -> list[str]:
    """The header paragraph: settings and the headline metrics with the chance level."""
    p, m = result.params, result.metrics
    purity, chance = m.get("cluster_genre_purity", np.nan), m.get("cluster_genre_purity_shuffled", np.nan)
    ratio = purity / chance if chance else float("nan")
    space = "L2-normalised" if p.get("normalize") else "raw"
    return [
        f"KMeans, k={p.get('n_clusters')}, seed {p.get('seed')}, n_init {p.get('n_init')}, on {space} "
        f"movie embeddings. {m.get('cluster_movies_fitted', '?')} movies with at least "
        f"{p.get('min_ratings')} training ratings fitted the centroids; "
        f"{m.get('cluster_movies_assigned', 0)} rarer movies were then assigned to the nearest one.",
        "",
        f"Genre purity {_fmt(purity)} against {_fmt(chance)} with the same movies shuffled across "
        f"clusters of the same sizes (x{_fmt(ratio, 2)}); silhouette {_fmt(m.get('cluster_silhouette'))}. "
        "Genres were not an input: they only describe the clusters.",
    ]


def cluster_section(cluster_id: int, members: pd.DataFrame) -> list[str]:
    """Markdown for one cluster: size, top genres (of fitted movies), most-rated movies."""
    fitted = members[members["fitted"]] if "fitted" in members else members
    described = fitted if len(fitted) else members
    genres = top_genres(described["genres"], N_TOP_GENRES)
    headline = ", ".join(f"{g} {share:.0%}" for g, share in genres) or "no genres"
    top = members.sort_values(["n_ratings", "movieId"], ascending=[False, True]).head(N_TOP_MOVIES)
    lines = [
        f"## Cluster {cluster_id}: {headline}",
        "",
        f"Size: {len(members)} movies ({len(fitted)} fitted, {len(members) - len(fitted)} assigned).",
        "Genre shares are of the fitted movies; the table lists the most-rated members.",
        "",
        "| # | title | genres | ratings |",
        "|---:|---|---|---:|",
    ]
    for rank, row in enumerate(top.itertuples(index=False), start=1):
        lines.append(f"| {rank} | {_cell(row.title)} | {_genres_cell(row.genres)} | {int(row.n_ratings)} |")
    return lines + [""]


def cluster_report_markdown(result: ClusterResult, items: pd.DataFrame | None = None) -> str:
    """Markdown report of a clustering.

    Parameters
    ----------
    result:
        From :func:`mfrec.clustering.kmeans.cluster_movies`.
    items:
        Movie metadata with movieId, title, genres, n_ratings (e.g. the embeddings' meta);
        ``None`` uses what ``result.assignments`` carries.

    Returns
    -------
    str
        A title, a summary paragraph, then per cluster its size, top three genres with
        shares and the ten most-rated movies as a table.
    """
    frame = _with_counts(result, items)
    lines = ["# Movie clusters", "", *summary_lines(result), ""]
    for cluster_id, members in frame.groupby("cluster", sort=True):
        lines += cluster_section(int(cluster_id), members)
    return "\n".join(lines)


def write_outputs(result: ClusterResult, meta: pd.DataFrame, vectors: np.ndarray, folder: Path,
                  title: str = "") -> dict:
    """Write ``assignments.parquet``, ``report.md`` and ``clusters.png`` into ``folder``, each
    under a temporary name first; returns their paths."""
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
    space = prepare_vectors(vectors, bool(result.params["normalize"]))
    clusters_png(space[fitted], result.assignments["cluster"].to_numpy()[fitted],
                 result.assignments["title"].to_numpy()[fitted], result.assignments["n_ratings"].to_numpy()[fitted],
                 paths["plot_path"], title=title)
    return paths
