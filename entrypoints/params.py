"""The one place where MLproject's string parameters become mfrec's configs.

Each value is parsed and checked here, once; the steps receive configs, never strings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from mfrec.clustering.kmeans import ClusterConfig
from mfrec.data.custom import Columns
from mfrec.data.prepare import PrepareConfig
from mfrec.data.split import SplitConfig
from mfrec.errors import ConfigError
from mfrec.registry import DEFAULT_CHAMPION_METRIC, check_champion_metric
from mfrec.serving.bundle import AUTO, RankingConfig
from mfrec.training.config import TrainConfig
from mfrec.training.search import SearchConfig

_SPLIT, _TRAIN, _CLUSTER, _SEARCH = SplitConfig(), TrainConfig.__dataclass_fields__, ClusterConfig(), SearchConfig()
# dataset=custom: which columns of the user's tables mean what (parameter -> Columns field).
COLUMN_PARAMS = {"user_column": "user", "item_column": "item", "rating_column": "rating",
                 "timestamp_column": "timestamp", "items_path": "items_path", "title_column": "title",
                 "category_column": "category", "category_separator": "separator"}
PREPARE_DEFAULTS = {"dataset": PrepareConfig.dataset, "data_path": "", "split": _SPLIT.method,
                    "test_fraction": str(_SPLIT.test_fraction), "val_fraction": str(_SPLIT.val_fraction),
                    "seed": str(_SPLIT.seed),
                    **{param: getattr(Columns(), field) for param, field in COLUMN_PARAMS.items()}}
TRAIN_NUMBERS = {"n_factors": int, "epochs": int, "batch_size": int, "lr": float, "reg": float, "reg_exponent": float,
                 "implicit_weight": float, "confidence": float, "seed": int}
# Settings that take "auto": chosen on validation by the train step (mfrec.training.search).
AUTO_CAPABLE = ("reg", "reg_exponent", "implicit_weight", "confidence", "rating_weight", "genre_weight",
                "neighbour_weight", "neighbour_reg")
TRAIN_DEFAULTS = {**{name: str(_TRAIN[name].default) for name in TRAIN_NUMBERS},
                  "solver": _TRAIN["solver"].default, "als_solve": _TRAIN["als_solve"].default,
                  "rating_weight": str(RankingConfig.rating_weight), "genre_weight": str(RankingConfig.genre_weight),
                  "neighbour_weight": str(RankingConfig.neighbour_weight),
                  "neighbour_reg": str(RankingConfig.neighbour_reg),
                  "objective": _SEARCH.objective, "search_trials": str(_SEARCH.trials),
                  "search_seconds": str(_SEARCH.seconds), "device": _TRAIN["device"].default, "refit_all": "true"}
CLUSTER_DEFAULTS = {"n_clusters": str(_CLUSTER.n_clusters), "seed": str(_CLUSTER.seed),
                    "normalize": str(_CLUSTER.normalize).lower(), "min_ratings": str(_CLUSTER.min_ratings),
                    "n_init": str(_CLUSTER.n_init)}
# The metrics a pipeline's top-level run carries (docs: "What a run logs"); a step's other
# metrics stay on the step's own run, so that no chart shows a pipeline twice.
HEADLINE_METRICS = ("train_loss", "val_rmse", "val_ndcg_at_10", "test_rmse", "test_mae", "test_precision_at_10",
                    "test_recall_at_10",
                    "test_ndcg_at_10", "baseline_global_mean_rmse", "baseline_bias_rmse",
                    "baseline_popularity_ndcg_at_10", "train_seconds", "epochs_run", "cluster_silhouette",
                    "cluster_inertia", "cluster_genre_purity", "cluster_genre_purity_shuffled")
PIPELINE_DEFAULTS = {**PREPARE_DEFAULTS, **TRAIN_DEFAULTS, "n_clusters": CLUSTER_DEFAULTS["n_clusters"],
                     "model_name": "mfrec", "champion_metric": DEFAULT_CHAMPION_METRIC}


def parse_number(name: str, value, kind):
    """``kind(value)`` (or ``"auto"`` for a setting in ``AUTO_CAPABLE``), or a clear error
    naming the parameter."""
    if name in AUTO_CAPABLE and str(value).strip().lower() == AUTO:
        return AUTO
    try:
        if kind is int:
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        expected = "an integer" if kind is int else "a number"
        raise ConfigError(f"parameter {name} must be {AUTO!r} or {expected}" if name in AUTO_CAPABLE else
                          f"parameter {name} must be {expected}, got {value!r}") from None


def parse_bool(name: str, value) -> bool:
    """``True``/``False`` from a bool or the strings MLproject passes (true/false, 1/0, yes/no,
    y/n, on/off), or a clear error naming the parameter."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise ConfigError(f"parameter {name} must be true or false, got {value!r}")


def prepare_config(values: dict) -> PrepareConfig:
    split = SplitConfig(values["split"], parse_number("test_fraction", values["test_fraction"], float),
                        parse_number("val_fraction", values["val_fraction"], float),
                        parse_number("seed", values["seed"], int))
    text = {field: str(values.get(param, getattr(Columns(), field)) or "") for param, field in COLUMN_PARAMS.items()}
    columns = Columns(**{field: value if field == "separator" else value.strip() for field, value in text.items()})
    return PrepareConfig(values["dataset"], values["data_path"] or "", split, columns)


def train_config(values: dict, progress=None) -> TrainConfig:
    numbers = {name: parse_number(name, values[name], kind) for name, kind in TRAIN_NUMBERS.items()}
    return TrainConfig(**numbers, solver=values["solver"], als_solve=values["als_solve"], device=values["device"],
                       progress=progress)


def for_prepared(config: TrainConfig, manifest: dict) -> TrainConfig:
    """``config`` for the prepared data its manifest describes: its rating scale, and whether
    its rows are ratings or choices (implicit feedback)."""
    return replace(config, rating_range=tuple(manifest.get("rating_scale", config.rating_range)),
                   feedback=manifest.get("feedback", "explicit"))


def ranking_config(values: dict) -> RankingConfig:
    return RankingConfig(**{name: parse_number(name, values[name], float)
                            for name in ("rating_weight", "genre_weight", "neighbour_weight", "neighbour_reg")})


def search_config(values: dict) -> SearchConfig:
    return SearchConfig(objective=str(values["objective"]).strip().lower(),
                        trials=parse_number("search_trials", values["search_trials"], int),
                        seconds=parse_number("search_seconds", values["search_seconds"], float),
                        seed=parse_number("seed", values["seed"], int))


def cluster_config(values: dict) -> ClusterConfig:
    defaults = {**CLUSTER_DEFAULTS, **{k: v for k, v in values.items() if k in CLUSTER_DEFAULTS}}
    return ClusterConfig(n_clusters=parse_number("n_clusters", defaults["n_clusters"], int),
                         seed=parse_number("seed", defaults["seed"], int),
                         normalize=parse_bool("normalize", defaults["normalize"]),
                         min_ratings=parse_number("min_ratings", defaults["min_ratings"], int),
                         n_init=parse_number("n_init", defaults["n_init"], int))


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ``main`` runs with: prepare, train, rank, cluster, register."""

    prepare: PrepareConfig
    train: TrainConfig
    ranking: RankingConfig
    cluster: ClusterConfig
    model_name: str
    refit_all: bool = True  # serve a model fit on every prepared rating (false: the held-out one)
    search: SearchConfig = SearchConfig()
    champion_metric: str = DEFAULT_CHAMPION_METRIC  # the held-out metric the champion rule compares

    @classmethod
    def from_params(cls, values: dict, progress=None) -> "PipelineConfig":
        """Every parameter parsed and checked before the first step runs."""
        if not str(values["model_name"]).strip():
            raise ConfigError("parameter model_name must not be empty")
        return cls(prepare_config(values), train_config(values, progress), ranking_config(values),
                   cluster_config(values), values["model_name"], parse_bool("refit_all", values["refit_all"]),
                   search_config(values),
                   check_champion_metric(str(values.get("champion_metric", DEFAULT_CHAMPION_METRIC)).strip()))

    def run_name(self) -> str:
        split = self.prepare.split
        return run_name(self.train.n_factors, self.prepare.dataset, split.method, split.seed, self.train.reg)

    def params(self) -> dict:
        """The MLproject parameters this config was made from, as it read them."""
        split, train = self.prepare.split, self.train
        columns = self.prepare.columns
        return {"dataset": self.prepare.dataset, "data_path": self.prepare.data_path, "split": split.method,
                "test_fraction": split.test_fraction, "val_fraction": split.val_fraction, "seed": split.seed,
                **{param: getattr(columns, field) for param, field in COLUMN_PARAMS.items()},
                **{name: getattr(train, name) for name in TRAIN_NUMBERS if name != "seed"},
                "solver": train.solver, "als_solve": train.als_solve, "device": train.device,
                "rating_weight": self.ranking.rating_weight, "genre_weight": self.ranking.genre_weight,
                "neighbour_weight": self.ranking.neighbour_weight, "neighbour_reg": self.ranking.neighbour_reg,
                "objective": self.search.objective, "search_trials": self.search.trials,
                "search_seconds": self.search.seconds, "refit_all": str(self.refit_all).lower(),
                "n_clusters": self.cluster.n_clusters,
                "model_name": self.model_name, "champion_metric": self.champion_metric}

    def with_factors(self, n_factors: int) -> "PipelineConfig":
        return replace(self, train=replace(self.train, n_factors=n_factors))


def run_name(n_factors, dataset, split, seed, reg) -> str:
    """A pipeline run's name, short enough for the runs table: what differs between runs people
    compare, then when it started, e.g. ``k8-auto-121305`` (settings chosen on validation) or
    ``k8-reg2.5-121305`` (dataset, split and seed follow when they are not the defaults:
    ``k8-auto-121305-ml-1m-temporal-s1``)."""
    try:
        settings = f"reg{float(reg):g}"
    except ValueError:  # "auto" (a bad value is refused when the config is made)
        settings = str(reg)[:10]
    name = f"k{n_factors}-{settings}-{time.strftime('%H%M%S')}"
    if str(dataset) != PREPARE_DEFAULTS["dataset"]:
        name += f"-{dataset}"
    if (str(split), str(seed)) != ("random", "0"):
        name += f"-{split}-s{seed}"
    return name
