"""PNG figures of a run: the learning curve, a 2-D map of the movie clusters, a sweep over n_factors.

Matplotlib runs on the Agg backend (no display on servers). Each figure is saved to a
temporary file and renamed, so a reader never sees a half-written image.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

N_LABELLED = 8


def _save_atomic(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def learning_curve_png(history: list[dict], path, title: str = "") -> Path:
    """Training loss (an MSE) and the validation score early stopping followed -- RMSE, or
    NDCG@10 for implicit feedback -- per epoch, each on its own scale, in two panels sharing
    the epoch axis; ``title`` names the model and data.

    ``history`` holds dicts with ``epoch`` and optionally ``train_loss``, ``val_rmse``,
    ``val_ndcg_at_10``.
    """
    epochs = [h["epoch"] for h in history]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6, 5))
    if any("train_loss" in h for h in history):
        top.plot(epochs, [h.get("train_loss", np.nan) for h in history], marker=".", color="tab:blue")
    else:
        top.text(0.5, 0.5, "no rating loss (implicit feedback)", ha="center", va="center", transform=top.transAxes)
    top.set_ylabel("train loss (rating MSE)")
    key, label = ("val_rmse", "validation RMSE") if any("val_rmse" in h for h in history) else \
        ("val_ndcg_at_10", "validation NDCG@10")
    val = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
    if val:
        x, y = zip(*val)
        bottom.plot(x, y, marker=".", color="tab:orange")
        best = int(np.nanargmin(y) if key == "val_rmse" else np.nanargmax(y))
        bottom.axvline(x[best], color="grey", linestyle=":", label=f"best epoch {x[best]}")
        bottom.legend(loc="upper right")
    else:
        bottom.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylabel(label)
    bottom.set_xlabel("epoch")
    fig.suptitle(f"Learning curve: {title}" if title else "Learning curve")
    return _save_atomic(fig, path)


def clusters_png(vectors: np.ndarray, labels, titles, n_ratings, path, n_labelled: int = N_LABELLED,
                 title: str = "") -> Path:
    """PCA projection of ``vectors`` to 2-D, coloured by cluster, the most-rated titles labelled
    where they overlap no other label; ``title`` names the model and data.

    Point size grows with the rating count so the well-known movies stand out.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(labels)
    n_ratings = np.asarray(n_ratings, dtype=np.float64)
    titles = np.asarray(titles, dtype=object)
    xy = PCA(n_components=2, random_state=0).fit_transform(vectors) if len(vectors) > 2 else np.zeros((len(vectors), 2))
    fig, ax = plt.subplots(figsize=(8, 7))
    cmap = plt.get_cmap("tab20" if len(np.unique(labels)) > 10 else "tab10")
    sizes = 4 + 30 * np.sqrt(n_ratings / max(n_ratings.max(initial=0), 1))
    for i, cluster in enumerate(np.unique(labels)):
        mask = labels == cluster
        ax.scatter(xy[mask, 0], xy[mask, 1], s=sizes[mask], color=cmap(i % cmap.N), alpha=0.6,
                   linewidths=0, label=f"cluster {cluster}")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    heading = "Movie embeddings (PCA), coloured by KMeans cluster"
    ax.set_title(f"{heading}\n{title}" if title else heading, fontsize=10)
    ax.legend(fontsize=7, markerscale=1.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    order = np.argsort(-n_ratings, kind="stable")[:n_labelled]
    place_labels(ax, xy[order], [str(t) for t in titles[order]])
    return _save_atomic(fig, path)


# Offsets (points) tried for a label, nearest first: beside the point, then further out.
_OFFSETS = [(dx * r, dy * r) for r in (4, 14, 26, 40, 56, 75, 95, 120) for dx, dy in
            ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))]


def place_labels(ax, points: np.ndarray, texts: list[str]) -> list:
    """Label ``points`` with ``texts``, each at the first offset where its box overlaps no box
    placed before and stays inside the axes (a line joins a label set apart to its point); a
    label with no such place is left out. Returns the annotations placed."""
    fig = ax.figure
    ax.autoscale_view()
    ax.set_xlim(ax.get_xlim())  # freeze the limits the boxes are measured against
    ax.set_ylim(ax.get_ylim())
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed, boxes = [], []
    for point, text in zip(points, texts):
        for dx, dy in _OFFSETS:
            far = abs(dx) > 14 or abs(dy) > 14
            note = ax.annotate(text, point, xytext=(dx, dy), textcoords="offset points", fontsize=7,
                               ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
                               bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.8, "lw": 0})
            box = note.get_window_extent(renderer).expanded(1.04, 1.2)
            inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1)
            if inside and not any(box.overlaps(other) for other in boxes):
                placed.append(note)
                boxes.append(box)
                if far:  # a line from the point to its label (drawn under the labels)
                    ax.annotate("", point, xytext=(dx, dy), textcoords="offset points", zorder=1,
                                arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})
                break
            note.remove()
    return placed


def sweep_png(rows: list[dict], path, title: str = "") -> Path:
    """Validation and test RMSE (one scale) and test NDCG@10 against n_factors, for a sweep's
    ``rows`` (dicts with n_factors, best_val_rmse, test_rmse, test_ndcg_at_10)."""
    rows = sorted(rows, key=lambda r: r["n_factors"])
    k = [r["n_factors"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6, 5))
    top.plot(k, [r["best_val_rmse"] for r in rows], marker="o", label="validation RMSE (chooses)")
    top.plot(k, [r["test_rmse"] for r in rows], marker="o", label="test RMSE")
    top.set_ylabel("RMSE")
    top.legend(fontsize=8)
    bottom.plot(k, [r["test_ndcg_at_10"] for r in rows], marker="o", color="tab:green")
    bottom.set_ylabel("test NDCG@10")
    bottom.set_xlabel("n_factors")
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(k, [str(v) for v in k])
    fig.suptitle(f"Sweep over n_factors: {title}" if title else "Sweep over n_factors")
    return _save_atomic(fig, path)
