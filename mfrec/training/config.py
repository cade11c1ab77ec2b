"""Hyper-parameters of one fit, checked once, when the config is made."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from mfrec.errors import ConfigError

SOLVERS = ("als", "adam")
# "explicit": ratings on a scale; "implicit": every row is a choice (clicks, purchases, plays), with
# no rating to predict: the choice part alone is fitted and the sweep count follows validation NDCG.
FEEDBACK = ("explicit", "implicit")
ALS_SOLVES = ("auto", "exact", "cg")
# From this many factors on, als_solve=auto runs conjugate-gradient steps instead of exact
# solves (measured: docs/benchmarks.md, "CG steps").
CG_FROM_FACTORS = 20
# A setting whose value the train step chooses on validation (mfrec.training.search).
AUTO = "auto"
SEARCHABLE = ("reg", "reg_exponent", "implicit_weight", "confidence")
# Where the search starts (and what TrainConfig.with_prior() fills in): values a hand search
# found on ml-latest-small, per solver.
PRIOR = {"als": {"reg": 2.5, "reg_exponent": 0.0, "implicit_weight": 2.0, "confidence": 5.0},
         "adam": {"reg": 10.0, "reg_exponent": 0.0, "implicit_weight": 1.0, "confidence": 5.0}}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a fit. ``reg``, ``reg_exponent``, ``implicit_weight`` and ``confidence``
    may be ``"auto"`` (the default for all but ``reg_exponent``): the train step
    (:func:`mfrec.workflow.train_and_evaluate`) then chooses them on the validation split
    (:mod:`mfrec.training.search`); :func:`mfrec.training.fit.fit` itself takes numbers only.

    ``device`` is resolved when the config is made (``auto`` becomes the device it picks), so
    every step of a run uses the same one; change a field with :func:`dataclasses.replace`.
    ``als_solve="auto"`` is decided by ``n_factors`` (:attr:`solve`).
    """

    n_factors: int = 8
    # "als": exact alternating least-squares sweeps (an epoch is one sweep); "adam":
    # minibatch gradient steps with a softmax choice loss (batch_size, lr, implicit_users
    # and implicit_items apply only to it).
    solver: str = "als"
    epochs: int = 40
    batch_size: int = 8192
    lr: float = 0.01
    # A row's factor penalty is reg * sqrt(n_factors / 8) * (n / mean n)^reg_exponent for a
    # row with n ratings (mfrec.training.als.row_penalties): the same reg suits any k.
    reg: float | str = AUTO
    bias_reg: float = 5.0
    reg_exponent: float | str = 0.0
    # ALS: how each side's systems are solved: "exact" (factorised), "cg" (cg_steps warm-started
    # conjugate-gradient steps a side and sweep, cost ~k^2 instead of ~k^3) or "auto" (by k).
    als_solve: str = "auto"
    cg_steps: int = 2
    # Weight of the "which films" part of the objective; 0 trains a rating-only model.
    implicit_weight: float | str = AUTO
    # ALS: weight of a rated user-film pair in the choice loss relative to an unrated one.
    confidence: float | str = AUTO
    # Adam: softmax of the choice head over at most this many users x items per batch (0 =
    # all); exact on small catalogues, sampled (importance-corrected) at scale.
    implicit_users: int = 1024
    implicit_items: int = 16384
    init_std: float = 0.01
    # Early stopping: stop after `patience` epochs without validation RMSE improving by more
    # than min_delta, and keep the best epoch seen.
    patience: int = 3
    min_delta: float = 5e-4
    seed: int = 0
    # Same seed, same device -> same numbers (scatter-adds otherwise sum in thread order).
    deterministic: bool = True
    device: str = "auto"
    rating_range: tuple = (0.5, 5.0)
    feedback: str = "explicit"
    progress: Optional[bool] = field(default=None, compare=False)  # None: only when stderr is a terminal

    def __post_init__(self) -> None:
        for ok, message in self._checks():
            if not ok:
                raise ConfigError(message)
        from mfrec.training.device import resolve_device

        object.__setattr__(self, "rating_range", tuple(float(v) for v in self.rating_range))
        object.__setattr__(self, "device", str(resolve_device(self.device, needs_sparse=self.solver == "als")))

    @property
    def implicit(self) -> bool:
        """Whether the data is implicit feedback (no ratings: the choice part alone)."""
        return self.feedback == "implicit"

    @property
    def solve(self) -> str:
        """How ALS solves its systems: ``als_solve``, with ``auto`` decided by the number of factors."""
        if self.als_solve != "auto":
            return self.als_solve
        return "cg" if self.n_factors >= CG_FROM_FACTORS else "exact"

    def auto_fields(self) -> tuple:
        """The settings still to be chosen on validation."""
        return tuple(name for name in SEARCHABLE if getattr(self, name) == AUTO)

    def with_prior(self) -> "TrainConfig":
        """Every ``auto`` setting replaced by where the search starts (``PRIOR``)."""
        return replace(self, **{name: PRIOR[self.solver][name] for name in self.auto_fields()})

    def _checks(self):
        def finite(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        def number_or_auto(name, ok) -> tuple:
            value = getattr(self, name)
            return (value == AUTO or (finite(value) and ok(value)), f"{name} must be {AUTO!r} or "
                    f"{_RANGES[name]}, got {value!r}")

        low_high = tuple(self.rating_range)
        yield self.solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}"
        yield self.feedback in FEEDBACK, f"feedback must be one of {', '.join(FEEDBACK)}, got {self.feedback!r}"
        yield (self.feedback == "explicit" or self.implicit_weight == AUTO or self.implicit_weight > 0,
               "implicit feedback is learnt by the choice part alone: implicit_weight must be > 0")
        yield self.n_factors >= 1, f"n_factors must be >= 1, got {self.n_factors}"
        yield (len(low_high) == 2 and all(finite(v) for v in low_high) and low_high[0] < low_high[1],
               f"rating_range must be (low, high) with low < high, got {self.rating_range}")
        yield self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"
        yield self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"
        yield finite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}"
        yield number_or_auto("reg", lambda v: v >= 0)
        yield (self.solver != "als" or self.reg == AUTO or self.reg > 0,
               f"reg must be > 0 with solver 'als' (a user with fewer ratings than factors has no "
               f"unique least-squares solution otherwise), got {self.reg}")
        yield number_or_auto("confidence", lambda v: v >= 1)
        yield finite(self.bias_reg) and self.bias_reg >= 0, f"bias_reg must be >= 0, got {self.bias_reg}"
        yield number_or_auto("reg_exponent", lambda v: 0 <= v <= 2)
        yield self.als_solve in ALS_SOLVES, f"als_solve must be one of {', '.join(ALS_SOLVES)}, got {self.als_solve!r}"
        yield self.cg_steps >= 1, f"cg_steps must be >= 1, got {self.cg_steps}"
        yield number_or_auto("implicit_weight", lambda v: v >= 0)
        yield self.implicit_users >= 0, f"implicit_users must be >= 0, got {self.implicit_users}"
        yield self.implicit_items >= 0, f"implicit_items must be >= 0, got {self.implicit_items}"
        yield finite(self.init_std) and self.init_std > 0, f"init_std must be > 0, got {self.init_std}"
        yield self.patience >= 0, f"patience must be >= 0, got {self.patience}"
        yield finite(self.min_delta) and self.min_delta >= 0, f"min_delta must be >= 0, got {self.min_delta}"

    def as_params(self) -> dict:
        """The settings as JSON-ready values (what a bundle, a run and a benchmark record), with
        ``als_solve`` as it runs."""
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k != "progress"}
        return {**params, "als_solve": self.solve}


_RANGES = {"reg": "a number >= 0", "confidence": "a number >= 1 (a rated film weighs at least as much as an unrated one)",
           "reg_exponent": "a number between 0 and 2", "implicit_weight": "a number >= 0"}
