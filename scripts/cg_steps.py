"""How many CG steps a side and sweep: the training objective after 2, 5, 10, 20 and 40
sweeps, and the seconds of a sweep, for the exact solve and 1, 2, 3 CG steps.

    python scripts/cg_steps.py --data-path path/to/ml-latest-small.zip [--factors 32,64]
    python scripts/cg_steps.py --dataset synthetic-1m --factors 64,128 --sweeps 20

Fits the search's starting settings on the train split of the project's split (seed 0) from
the same start, on one thread, and prints a markdown table. The objective is the one
mfrec.training.als minimises (its choice term summed with the Gramian, never the users x
films matrix); lower is better. The exact solve is skipped above 64 factors (minutes a sweep).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfrec.data.ids import IdIndex, Interactions  # noqa: E402
from mfrec.data.prepare import PrepareConfig, load_prepared, prepare  # noqa: E402
from mfrec.training.als import AlsSolver  # noqa: E402
from mfrec.training.config import TrainConfig  # noqa: E402
from mfrec.training.model import MatrixFactorization  # noqa: E402
from mfrec.training.parallel import Workers  # noqa: E402

CHECKPOINTS = (2, 5, 10, 20, 40)


def objective(model, config, users, items, ratings, user_reg, item_reg) -> float:
    """The ALS objective at ``model``, in float64."""
    m = {name: t.detach().double() for name, t in model.named_parameters()}
    m.update({name: t.double() for name, t in model.named_buffers()})
    p, c, q = m["user_factors"], m["user_choice_factors"], m["item_factors"]
    d, b_u, b_i = m["item_logit_bias"], m["user_bias"], m["item_bias"]
    prediction = m["global_mean"] + b_u[users] + b_i[items] + (p[users] * q[items]).sum(1)
    rating = ((ratings.double() - prediction) ** 2).sum()
    w0 = config.implicit_weight
    w1 = w0 * config.confidence
    every_pair = ((c @ (q.T @ q)) * c).sum() + 2 * (c @ (q.T @ d)).sum() + len(c) * (d * d).sum()
    score = (c[users] * q[items]).sum(1) + d[items]
    choice = w0 * every_pair + (w1 * (1 - score) ** 2 - w0 * score ** 2).sum()
    penalty = (user_reg.double() * (p ** 2 + c ** 2).sum(1)).sum() + (item_reg.double() * (q ** 2).sum(1)).sum()
    biases = config.bias_reg * ((b_u ** 2).sum() + (b_i ** 2).sum() + (d ** 2).sum())
    return float(rating + choice + penalty + biases)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-path", default="")
    ap.add_argument("--dataset", default="ml-latest-small")
    ap.add_argument("--factors", default="32,64")
    ap.add_argument("--sweeps", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepare(PrepareConfig(dataset=args.dataset, data_path=args.data_path), Path(tmp) / "p", progress=False)
        train = load_prepared(Path(tmp) / "p").train
    data = Interactions.from_frame(train, IdIndex(train["userId"]), IdIndex(train["movieId"]))
    users, items = torch.as_tensor(data.users).long(), torch.as_tensor(data.items).long()
    ratings = torch.as_tensor(data.ratings).float()
    shown = [c for c in CHECKPOINTS if c <= args.sweeps]
    torch.set_num_threads(1)
    print(f"| k | solve | objective after {', '.join(map(str, shown))} sweeps | seconds a sweep |")
    print("|---:|---|---|---:|")
    for k in (int(v) for v in args.factors.split(",")):
        for solve, steps in (("exact", 0), ("cg", 1), ("cg", 2), ("cg", 3)):
            if solve == "exact" and k > 64:
                continue
            config = replace(TrainConfig(n_factors=k, als_solve=solve, progress=False).with_prior(),
                             cg_steps=max(steps, 1))
            model = MatrixFactorization(data.n_users, data.n_items, k, float(ratings.double().mean()), config.init_std,
                                        generator=torch.Generator().manual_seed(config.seed))
            solver = AlsSolver(model, users, items, ratings, config, workers=Workers(1))
            values, seconds = [], 0.0
            for sweep in range(1, args.sweeps + 1):
                started = time.perf_counter()
                solver.epoch()
                seconds += time.perf_counter() - started
                if sweep in shown:
                    values.append(objective(model, config, users, items, ratings, solver.user_reg, solver.item_reg))
            label = "exact" if solve == "exact" else f"CG, {steps} step{'s' if steps > 1 else ''}"
            print(f"| {k} | {label} | {' / '.join(f'{v:,.0f}' for v in values)} | {seconds / args.sweeps:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
