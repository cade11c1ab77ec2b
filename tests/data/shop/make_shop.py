"""Writes the shop example: ``events.csv`` (customer, sku, stars, time) and ``products.csv``
(sku, name, category; categories split on ";"), a small made-up store whose customers each
favour a few categories. Seeded: running it again writes the same bytes.

    python tests/data/shop/make_shop.py
"""

from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = ["Books", "Garden", "Kitchen", "Toys", "Audio", "Outdoor", "Games", "Office"]
NOUNS = {"Books": "novel", "Garden": "planter", "Kitchen": "pan", "Toys": "robot", "Audio": "speaker",
         "Outdoor": "tent", "Games": "puzzle", "Office": "lamp"}


def main(out: Path = Path(__file__).resolve().parent, customers: int = 500, products: int = 300) -> None:
    rng = np.random.default_rng(7)
    first = rng.integers(0, len(CATEGORIES), products)
    second = np.where(rng.random(products) < 0.3, rng.integers(0, len(CATEGORIES), products), first)
    skus = [f"SKU-{i:05d}" for i in rng.choice(90_000, products, replace=False) + 10_000]
    names = [f"{NOUNS[CATEGORIES[a]].title()} {i}" for i, a in enumerate(first)]
    category = [CATEGORIES[a] if a == b else f"{CATEGORIES[a]};{CATEGORIES[b]}" for a, b in zip(first, second)]
    member = np.zeros((products, len(CATEGORIES)))
    member[np.arange(products), first] = 1
    member[np.arange(products), second] = 1
    popularity = rng.pareto(1.5, products) + 0.2
    quality = rng.normal(0, 0.6, products)
    rows = []
    for c in range(customers):
        taste = rng.dirichlet(np.full(len(CATEGORIES), 0.3))
        appeal = popularity * (member @ taste + 0.02)
        n = int(np.clip(rng.lognormal(3.0, 0.6), 5, products // 2))
        picked = rng.choice(products, n, replace=False, p=appeal / appeal.sum())
        stars = np.clip(np.rint(3.2 + quality[picked] + 2.0 * (member[picked] @ taste) + rng.normal(0, 0.7, n)), 1, 5)
        days = np.sort(rng.integers(0, 700, n))
        for p, s, d in zip(picked, stars, days):
            rows.append((f"cust-{c:04d}", skus[p], int(s), d))
    events = pd.DataFrame(rows, columns=["customer", "sku", "stars", "day"])
    start = pd.Timestamp("2024-01-01T08:00:00Z")
    events["time"] = (start + pd.to_timedelta(events.pop("day"), unit="D")).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    events.to_csv(out / "events.csv", index=False)
    pd.DataFrame({"sku": skus, "name": names, "category": category}).sort_values("sku").to_csv(
        out / "products.csv", index=False)


if __name__ == "__main__":
    main()
