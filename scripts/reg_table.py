"""How the best ``reg`` moves with the number of factors, on the validation split.

    python scripts/reg_table.py --data-path path/to/ml-latest-small.zip [--factors 8,32,64,128]

For each k and reg (in mfrec's units: a k-factor row's penalty is reg * sqrt(k / 8)), the
model is fit on the training split at the search's other starting values, with early
stopping on validation, and scored on validation: RMSE / NDCG@10 (ranking weights 0.25 and
0.1). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfrec.data.prepare import PrepareConfig, load_prepared, prepare  # noqa: E402
from mfrec.serving.bundle import RankingConfig  # noqa: E402
from mfrec.training.config import TrainConfig  # noqa: E402
from mfrec.workflow import train_and_evaluate  # noqa: E402

REGS = (0.5, 1.0, 2.5, 5.0, 10.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-path", default="")
    ap.add_argument("--dataset", default="ml-latest-small")
    ap.add_argument("--factors", default="8,32,64,128")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepare(PrepareConfig(args.dataset, args.data_path), Path(tmp) / "p", progress=False)
        p = load_prepared(Path(tmp) / "p")
    print("| n_factors | " + " | ".join(f"reg {r:g}" for r in REGS) + " |")
    print("|---:|" + "---|" * len(REGS))
    for k in (int(x) for x in args.factors.split(",")):
        cells = []
        for reg in REGS:
            config = TrainConfig(n_factors=k, reg=reg, progress=False).with_prior()
            out = train_and_evaluate(p.train, p.val, p.val, p.movies, config, RankingConfig().with_prior(), refit=False)
            cells.append(f"{out.metrics['test_rmse']:.4f} / {out.metrics['test_ndcg_at_10']:.4f}")
        print(f"| {k} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
