"""Hyper-parameters of one fit, checked once, when the config is made."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from mfrec.errors import ConfigError

SOLVERS = ("als", "adam")


@dataclass(frozen=True)
class TrainConfig:
    """Defaults were chosen on the validation split (docs/tuning.md).

    ``device`` is resolved when the config is made (``auto`` becomes the device it picks), so
    every step of a run uses the same one; change a field with :func:`dataclasses.replace`.
    """

    n_factors: int = 8
    # "als": exact alternating least-squares sweeps (an epoch is one sweep); "adam":
    # minibatch gradient steps with a softmax choice loss (batch_size, lr, implicit_users
    # and implicit_items apply only to it).
    solver: str = "als"
    epochs: int = 40
    batch_size: int = 8192
    lr: float = 0.01
    reg: float = 2.5
    bias_reg: float = 5.0
    # Weight of the "which films" part of the objective; 0 trains a rating-only model.
    implicit_weight: float = 2.0
    # ALS: weight of a rated user-film pair in the choice loss relative to an unrated one.
    confidence: float = 5.0
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
    progress: Optional[bool] = field(default=None, compare=False)  # None: only when stderr is a terminal

    def __post_init__(self) -> None:
        for ok, message in self._checks():
            if not ok:
                raise ConfigError(message)
        from mfrec.training.device import resolve_device

        object.__setattr__(self, "rating_range", tuple(float(v) for v in self.rating_range))
        object.__setattr__(self, "device", str(resolve_device(self.device, needs_sparse=self.solver == "als")))

    def _checks(self):
        def finite(value) -> bool:
            return isinstance(value, (int, float)) and math.isfinite(value)

        low_high = tuple(self.rating_range)
        yield self.solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}"
        yield self.n_factors >= 1, f"n_factors must be >= 1, got {self.n_factors}"
        yield (len(low_high) == 2 and all(finite(v) for v in low_high) and low_high[0] < low_high[1],
               f"rating_range must be (low, high) with low < high, got {self.rating_range}")
        yield self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"
        yield self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"
        yield finite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}"
        yield finite(self.reg) and self.reg >= 0, f"reg must be >= 0, got {self.reg}"
        yield (self.solver != "als" or self.reg > 0,
               f"reg must be > 0 with solver 'als' (a user with fewer ratings than factors has no "
               f"unique least-squares solution otherwise), got {self.reg}")
        yield (finite(self.confidence) and self.confidence >= 1,
               f"confidence must be >= 1 (a rated film weighs at least as much as an unrated one), got {self.confidence}")
        yield finite(self.bias_reg) and self.bias_reg >= 0, f"bias_reg must be >= 0, got {self.bias_reg}"
        yield (finite(self.implicit_weight) and self.implicit_weight >= 0,
               f"implicit_weight must be >= 0, got {self.implicit_weight}")
        yield self.implicit_users >= 0, f"implicit_users must be >= 0, got {self.implicit_users}"
        yield self.implicit_items >= 0, f"implicit_items must be >= 0, got {self.implicit_items}"
        yield finite(self.init_std) and self.init_std > 0, f"init_std must be > 0, got {self.init_std}"
        yield self.patience >= 0, f"patience must be >= 0, got {self.patience}"
        yield finite(self.min_delta) and self.min_delta >= 0, f"min_delta must be >= 0, got {self.min_delta}"

    def as_params(self) -> dict:
        """The settings as JSON-ready values (what a bundle and a benchmark record)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k != "progress"}
