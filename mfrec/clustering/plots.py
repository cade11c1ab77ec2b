"""PNG figures: the learning curve and a 2-D map of the movie clusters.

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


def learning_curve_png(history: list[dict], path) -> Path:
    """Training loss and validation RMSE per epoch, in two panels sharing the epoch axis.

    ``history`` holds dicts with ``epoch``, ``train_loss`` and optionally ``val_rmse``.
    """
    epochs = [h["epoch"] for h in history]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6, 5))
    top.plot(epochs, [h["train_loss"] for h in history], marker=".", color="tab:blue")
    top.set_ylabel("train loss (rating MSE)")
    val = [(h["epoch"], h["val_rmse"]) for h in history if h.get("val_rmse") is not None]
    if val:
        x, y = zip(*val)
        bottom.plot(x, y, marker=".", color="tab:orange")
        best = int(np.nanargmin(y))
        bottom.axvline(x[best], color="grey", linestyle=":", label=f"best epoch {x[best]}")
        bottom.legend(loc="upper right")
    else:
        bottom.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylabel("validation RMSE")
    bottom.set_xlabel("epoch")
    fig.suptitle("Learning curve")
    return _save_atomic(fig, path)


def clusters_png(vectors: np.ndarray, labels, titles, n_ratings, path, n_labelled: int = N_LABELLED) -> Path:
    """PCA projection of ``vectors`` to 2-D, coloured by cluster, the most-rated titles labelled.

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
    for i in np.argsort(-n_ratings, kind="stable")[:n_labelled]:
        ax.annotate(str(titles[i]), xy[i], fontsize=7, xytext=(3, 3), textcoords="offset points",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "alpha": 0.6, "lw": 0})
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("Movie embeddings, PCA projection, coloured by KMeans cluster")
    ax.legend(fontsize=7, markerscale=1.5, loc="best", ncol=2)
    return _save_atomic(fig, path)
