"""Your own interaction table (``dataset=custom``): reading, checking, coding ids, preparing,
and a served model that answers with the ids it was given."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import REPO_ROOT

from mfrec.data.custom import Columns, read_custom
from mfrec.data.prepare import PrepareConfig, load_dataset, load_prepared, prepare
from mfrec.data.split import SplitConfig
from mfrec.errors import ConfigError, DataError, RequestError

SHOP = REPO_ROOT / "tests" / "data" / "shop"
SHOP_COLUMNS = Columns(user="customer", item="sku", rating="stars", timestamp="time",
                       items_path=str(SHOP / "products.csv"), title="name", category="category", separator=";")


def test_shop_table_reads_with_its_own_ids_titles_and_categories():
    shop = read_custom(SHOP / "events.csv", SHOP_COLUMNS)
    events = pd.read_csv(SHOP / "events.csv")
    products = pd.read_csv(SHOP / "products.csv")
    assert len(shop.ratings) == len(events)
    assert list(shop.ids.users) == sorted(events["customer"].unique())
    assert list(shop.ids.items) == sorted(set(events["sku"]) | set(products["sku"]))
    # Row by row, codes point back at the ids, stars and times of the file.
    r = shop.ratings
    assert (shop.ids.users[r["userId"]] == events["customer"].to_numpy()).all()
    assert (shop.ids.items[r["movieId"]] == events["sku"].to_numpy()).all()
    assert (r["rating"].to_numpy() == events["stars"].to_numpy()).all()
    first = pd.Timestamp(events["time"].iloc[0]).timestamp()
    assert r["timestamp"].iloc[0] == first
    # Titles and categories come from the items table, the separator mapped to "|".
    items = shop.items.set_index(shop.ids.items[shop.items["movieId"]])
    sku = products.loc[products["category"].str.contains(";"), "sku"].iloc[0]
    row = products.set_index("sku").loc[sku]
    assert items.loc[sku, "title"] == row["name"]
    assert items.loc[sku, "genres"] == row["category"].replace(";", "|")
    assert shop.report["ids"] == {"users": "string", "items": "string"}
    assert shop.report["items_without_row"] == 0


def test_prepared_folder_records_the_mapping_checksum_and_ids(tmp_path):
    manifest = prepare(PrepareConfig("custom", str(SHOP / "events.csv"), SplitConfig(), SHOP_COLUMNS),
                       tmp_path / "p", progress=False)
    assert manifest["columns"]["user"] == "customer" and manifest["columns"]["separator"] == ";"
    assert manifest["ids"] == {"users": "string", "items": "string"}
    assert manifest["rating_scale"] == [1.0, 5.0]
    assert manifest["source"]["verification"].startswith("sha256 ")
    assert manifest["parse_report"]["source_sha256"] in manifest["source"]["verification"]
    p = load_prepared(tmp_path / "p")
    assert p.ids is not None and p.ids.users[0] == "cust-0000"
    assert len(p.train) + len(p.val) + len(p.test) == manifest["counts"]["ratings"]
    # The same file prepares to the same content; a changed rating to another.
    again = load_dataset("custom", SHOP / "events.csv", columns=SHOP_COLUMNS)
    assert again.data_sha256 == manifest["data_sha256"]
    events = pd.read_csv(SHOP / "events.csv")
    events.loc[0, "stars"] = 6 - events.loc[0, "stars"]
    events.to_csv(tmp_path / "changed.csv", index=False)
    changed = load_dataset("custom", tmp_path / "changed.csv", columns=SHOP_COLUMNS)
    assert changed.data_sha256 != manifest["data_sha256"]


def test_int64_ids_in_a_folder_of_parquet_parts_without_an_items_table(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    users = rng.integers(0, 60, n).astype(np.int64) * 10**12 + 7  # past int32, past 2**40
    items = -rng.integers(0, 80, n).astype(np.int64) - 2**40  # negative ids too
    table = pa.table({"u": users, "i": items, "r": rng.integers(1, 11, n).astype(np.float64) / 2,
                      "t": pa.array(pd.date_range("2025-01-01", periods=n, freq="h", tz="UTC"))})
    (tmp_path / "parts").mkdir()
    pq.write_table(table.slice(0, 1000), tmp_path / "parts" / "part-0.parquet")
    pq.write_table(table.slice(1000), tmp_path / "parts" / "part-1.parquet")
    (tmp_path / "parts" / "_SUCCESS").write_text("")
    columns = Columns(user="u", item="i", rating="r", timestamp="t")
    p_dir = tmp_path / "p"
    manifest = prepare(PrepareConfig("custom", str(tmp_path / "parts"), SplitConfig("temporal"), columns), p_dir,
                       progress=False)
    assert manifest["ids"] == {"users": "int64", "items": "int64"}
    assert manifest["rating_scale"] == [0.5, 5.0]
    p = load_prepared(p_dir)
    assert p.ids.users.dtype == np.int64 and set(p.ids.users) == set(users.tolist())
    assert set(p.ids.items) == set(items.tolist())
    # No items table: each item's title is its id.
    assert set(p.movies["title"]) == {str(v) for v in items.tolist()}
    # The temporal split holds each user's latest rows out.
    all_rows = pd.concat([p.train, p.val, p.test])
    last = all_rows.groupby("userId")["timestamp"].max()
    assert (p.test.groupby("userId")["timestamp"].max() == last.loc[p.test["userId"].unique()]).all()


def test_a_model_of_64_bit_ids_answers_with_them(tmp_path):
    """Ids past 2**53 (where a float would round them) and negative ones, in and out."""
    from mfrec.serving.bundle import RankingConfig
    from mfrec.serving.contract import answer
    from mfrec.training.config import TrainConfig
    from mfrec.workflow import served_model, train_and_evaluate

    rng = np.random.default_rng(1)
    n = 4000
    base = 2**60
    users = base + rng.integers(0, 80, n) * 3
    items = -(base + rng.integers(0, 120, n))
    pd.DataFrame({"user": users, "item": items, "stars": rng.integers(1, 6, n)}).to_parquet(tmp_path / "r.parquet")
    columns = Columns(user="user", item="item", rating="stars", timestamp="")
    prepare(PrepareConfig("custom", str(tmp_path / "r.parquet"), SplitConfig(), columns), tmp_path / "p",
            progress=False)
    p = load_prepared(tmp_path / "p")
    config = TrainConfig(progress=False, rating_range=tuple(p.manifest["rating_scale"]), epochs=3).with_prior()
    outcome = train_and_evaluate(p.train, p.val, p.test, p.movies, config, RankingConfig().with_prior())
    rec, _ = served_model(outcome, p.train, p.val, p.test, p.movies)
    rec = rec.with_ids(p.ids)
    user = int(users[0])
    rows = answer(rec, pd.DataFrame({"userId": [user]}), {"task": "recommend", "k": 3})
    assert [r["userId"] for r in rows] == [user] * 3 and all(r["movieId"] in set(items.tolist()) for r in rows)
    assert user > 2**53 and all(r["movieId"] < -(2**53) for r in rows)
    pred = answer(rec, pd.DataFrame({"userId": [user], "movieId": [int(items[0])]}), {"task": "predict"})
    assert pred[0]["movieId"] == int(items[0]) and pred[0]["known"]
    with pytest.raises(RequestError, match="integer ids"):
        answer(rec, pd.DataFrame({"userId": ["u1"]}), {"task": "recommend"})


def test_bad_rows_are_named_by_file_line_or_row_and_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("customer,sku,stars,time\nc1,s1,4,2024-01-01\n,s2,3,2024-01-02\nc2,s1,four,2024-01-03\n")
    with pytest.raises(DataError) as err:
        read_custom(bad, replace(SHOP_COLUMNS, items_path=""))
    assert "'customer'" in str(err.value) and "line 3" in str(err.value)
    bad.write_text("customer,sku,stars,time\nc1,s1,4,2024-01-01\nc2,s2,3,2024-01-02\nc2,s1,four,2024-01-03\n")
    with pytest.raises(DataError) as err:
        read_custom(bad, replace(SHOP_COLUMNS, items_path=""))
    assert "'stars'" in str(err.value) and "line 4" in str(err.value) and "'four'" in str(err.value)
    bad.write_text("customer,sku,stars,time\nc1,s1,4,2024-01-01\nc2,s2,3,yesterday\n")
    with pytest.raises(DataError, match=r"'time'.*line 3.*'yesterday'"):
        read_custom(bad, replace(SHOP_COLUMNS, items_path=""))
    pq.write_table(pa.table({"customer": ["a", "b", "c"], "sku": ["x", "y", "z"], "stars": [1.0, None, 3.0],
                             "time": [1, 2, 3]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"'stars'.*bad.parquet row 2"):
        read_custom(tmp_path / "bad.parquet", replace(SHOP_COLUMNS, items_path=""))
    with pytest.raises(DataError, match=r"no column 'user'.*customer, sku, stars, time"):
        read_custom(SHOP / "events.csv", replace(SHOP_COLUMNS, user="user"))
    (tmp_path / "dup.csv").write_text("sku,name,category\ns1,A,x\ns1,B,y\n")
    with pytest.raises(DataError, match="more than once"):
        read_custom(SHOP / "events.csv", replace(SHOP_COLUMNS, items_path=str(tmp_path / "dup.csv")))


def test_parameters_are_checked_before_reading():
    with pytest.raises(ConfigError, match="timestamp_column"):
        PrepareConfig("custom", str(SHOP / "events.csv"), SplitConfig("temporal"), replace(SHOP_COLUMNS, timestamp=""))
    with pytest.raises(ConfigError, match="data_path"):
        PrepareConfig("custom", "", SplitConfig(), SHOP_COLUMNS)
    with pytest.raises(ConfigError, match="dataset custom"):
        PrepareConfig("ml-latest-small", "", SplitConfig(), SHOP_COLUMNS)
    with pytest.raises(ConfigError, match="twice"):
        Columns(user="a", item="a")


@pytest.fixture(scope="module")
def shop_model(tmp_path_factory):
    """The shop table prepared, trained at the search's starting settings and served with its ids."""
    from mfrec.serving.bundle import RankingConfig
    from mfrec.training.config import TrainConfig
    from mfrec.workflow import served_model, train_and_evaluate

    out = tmp_path_factory.mktemp("shop") / "p"
    prepare(PrepareConfig("custom", str(SHOP / "events.csv"), SplitConfig(), SHOP_COLUMNS), out, progress=False)
    p = load_prepared(out)
    config = TrainConfig(progress=False, rating_range=tuple(p.manifest["rating_scale"])).with_prior()
    outcome = train_and_evaluate(p.train, p.val, p.test, p.movies, config, RankingConfig().with_prior())
    rec, _ = served_model(outcome, p.train, p.val, p.test, p.movies)
    return rec.with_ids(p.ids), outcome, p


def test_a_model_of_the_shop_beats_its_baselines(shop_model):
    _, outcome, _ = shop_model
    m = outcome.metrics
    assert m["test_rmse"] < m["baseline_bias_rmse"] - 0.02
    assert m["test_ndcg_at_10"] > m["baseline_popularity_ndcg_at_10"] + 0.02


def test_requests_and_answers_use_the_tables_own_ids(shop_model, tmp_path):
    from mfrec.serving.contract import answer
    from mfrec.serving.recommender import Recommender

    rec, _, p = shop_model
    rec.save(tmp_path / "bundle")
    rec = Recommender.load(tmp_path / "bundle")  # the ids travel with the saved model
    events = pd.read_csv(SHOP / "events.csv")
    rated = set(events.loc[events["customer"] == "cust-0042", "sku"])
    rows = answer(rec, pd.DataFrame({"userId": ["cust-0042", "new-customer"]}), {"task": "recommend", "k": 5})
    assert [r["userId"] for r in rows] == ["cust-0042"] * 5 + ["new-customer"] * 5
    assert all(r["movieId"].startswith("SKU-") for r in rows)
    assert not rated & {r["movieId"] for r in rows[:5]}  # never what they bought
    assert rows[0]["source"] == "personal" and rows[5]["source"] == "popular"
    pred = answer(rec, pd.DataFrame({"userId": ["cust-0042", "cust-0042"], "movieId": ["SKU-10514", "nope"]}),
                  {"task": "predict"})
    assert [r["movieId"] for r in pred] == ["SKU-10514", "nope"] and [r["known"] for r in pred] == [True, False]
    similar = answer(rec, pd.DataFrame({"movieId": ["SKU-10514"]}), {"task": "similar", "k": 3})
    assert {r["movieId"] for r in similar} == {"SKU-10514"} and all(r["similar_movieId"] != "SKU-10514"
                                                                   for r in similar)
    folded = answer(rec, pd.DataFrame({"userId": ["me", "me"], "movieId": ["SKU-10514", "SKU-10294"],
                                       "rating": [5, 4]}), {"task": "fold_in", "k": 3})
    assert {r["userId"] for r in folded} == {"me"} and len(folded) == 3
    with pytest.raises(RequestError, match="row 1"):
        answer(rec, pd.DataFrame({"userId": ["cust-0042", 2.5]}), {"task": "recommend"})


@pytest.fixture(scope="module")
def shop_clicks(tmp_path_factory):
    """The shop's rows as clicks (no stars): implicit feedback, settings chosen on validation."""
    from mfrec.training.config import TrainConfig
    from mfrec.workflow import served_model, train_and_evaluate

    out = tmp_path_factory.mktemp("clicks") / "p"
    columns = replace(SHOP_COLUMNS, rating="")
    manifest = prepare(PrepareConfig("custom", str(SHOP / "events.csv"), SplitConfig(), columns), out, progress=False)
    p = load_prepared(out)
    config = TrainConfig(progress=False, rating_range=tuple(manifest["rating_scale"]), feedback=manifest["feedback"])
    outcome = train_and_evaluate(p.train, p.val, p.test, p.movies, config)
    rec, _ = served_model(outcome, p.train, p.val, p.test, p.movies)
    return rec.with_ids(p.ids), outcome, manifest


def test_clicks_train_the_choice_part_alone_and_rank_better_than_popularity(shop_clicks):
    _, outcome, manifest = shop_clicks
    assert manifest["feedback"] == "implicit" and manifest["rating_scale"] == [0.0, 1.0]
    m = outcome.metrics
    assert np.isnan(m["test_rmse"]) and np.isnan(m["baseline_bias_rmse"])  # no ratings, no RMSE
    assert m["test_ndcg_at_10"] > m["baseline_popularity_ndcg_at_10"] + 0.05
    # The sweep count follows validation NDCG: it is recorded every sweep, the best one kept.
    history = outcome.choice.fit.history if outcome.choice.fit else outcome.history
    assert all("val_ndcg_at_10" in h and "val_rmse" not in h and "train_loss" not in h for h in outcome.history)
    assert outcome.best_epoch == 1 + int(np.argmax([h["val_ndcg_at_10"] for h in history]))
    assert outcome.ranking.rating_weight == 0.0  # no predicted rating to weigh in


def test_a_clicks_model_predicts_choice_scores_and_folds_in_items_alone(shop_clicks):
    from mfrec.serving.contract import answer

    rec, _, _ = shop_clicks
    pred = answer(rec, pd.DataFrame({"userId": ["cust-0042"] * 3, "movieId": ["SKU-10514", "SKU-10294", "nope"]}),
                  {"task": "predict"})
    scores = [r["prediction"] for r in pred]
    assert scores[2] == 0.0 and not pred[2]["known"]
    # The score is the ranking's choice part: the top recommendation outscores a film ranked lower.
    top = answer(rec, pd.DataFrame({"userId": ["cust-0042"]}), {"task": "recommend", "k": 20})
    first, last = top[0]["movieId"], top[-1]["movieId"]
    pair = answer(rec, pd.DataFrame({"userId": ["cust-0042"] * 2, "movieId": [first, last]}), {"task": "predict"})
    assert pair[0]["prediction"] > pair[1]["prediction"]
    folded = answer(rec, pd.DataFrame({"movieId": ["SKU-10514", "SKU-10294"]}), {"task": "fold_in", "k": 4})
    assert len(folded) == 4 and {"SKU-10514", "SKU-10294"}.isdisjoint(r["movieId"] for r in folded)


@pytest.mark.slow
def test_the_readme_example_runs_serves_and_recommends(tmp_path):
    """The README's "Your own data" commands as printed: ``mlflow run`` on the shop table, then
    ``mlflow models serve`` of its champion, then the ``recommend`` request."""
    import re
    import shlex
    import subprocess
    import urllib.request

    from benchmarks.served import start_model_server, stop_model_server
    from helpers import VENV_BIN, venv_env

    section = (REPO_ROOT / "README.md").read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]
    commands, request = re.findall(r"```bash\n(.*?)```", section, re.S)[:2]
    lines = commands.replace("\\\n", " ").strip().splitlines()
    run = shlex.split(lines[0])
    serve = shlex.split(lines[1])
    assert run[:3] == ["mlflow", "run", "."] and serve[:3] == ["mlflow", "models", "serve"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [str(VENV_BIN / "mlflow"), "run", str(REPO_ROOT), *run[3:], "--experiment-name", "shop"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=venv_env(MLFLOW_TRACKING_URI=uri))
    assert done.returncode == 0, done.stderr[-4000:]
    assert "promoted: no champion yet (test_ndcg_at_10" in done.stderr
    served = start_model_server(tmp_path, uri, model_uri=serve[serve.index("-m") + 1])

    def post(block: str) -> list:
        payload = re.search(r"-d '(.*?)'", block, re.S).group(1)
        req = urllib.request.Request(f"{served.url}/invocations", data=payload.encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as response:
            return json.loads(response.read())["predictions"]

    try:
        rows = post(request)
        # docs/serving.md's example for a model of the shop: a known and a new customer.
        serving_md = (REPO_ROOT / "docs" / "serving.md").read_text()
        shop_blocks = [b for b in re.findall(r"```bash\n(.*?)```", serving_md, re.S) if "127.0.0.1:5002" in b]
        assert shop_blocks
        for block in shop_blocks:
            answered = post(block)
            assert [r["userId"] for r in answered] == ["cust-0042"] * 3 + ["someone-new"] * 3
            assert [r["source"] for r in answered] == ["personal"] * 3 + ["popular"] * 3
    finally:
        stop_model_server(served)
    events = pd.read_csv(SHOP / "events.csv")
    bought = set(events.loc[events["customer"] == "cust-0042", "sku"])
    assert [r["userId"] for r in rows] == ["cust-0042"] * 3 and [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["movieId"].startswith("SKU-") and r["movieId"] not in bought for r in rows)
    assert all(r["source"] == "personal" for r in rows)


@pytest.mark.slow
def test_the_prepare_step_reuses_an_unchanged_table_and_redoes_a_changed_one(tmp_path):
    """``-e prepare`` on the shop table twice: the second run reuses the first's prepared data;
    after a rating changes in the file, it prepares again."""
    import shutil
    import subprocess
    import sys

    from helpers import venv_env

    data = tmp_path / "events.csv"
    shutil.copy(SHOP / "events.csv", data)
    args = ["--dataset", "custom", "--data-path", str(data), "--user-column", "customer", "--item-column", "sku",
            "--rating-column", "stars", "--timestamp-column", "time", "--items-path", str(SHOP / "products.csv"),
            "--title-column", "name", "--category-column", "category", "--category-separator", ";", "--no-progress"]

    def prepare_run(n: int) -> dict:
        out = tmp_path / f"result-{n}.json"
        done = subprocess.run([sys.executable, "-m", "entrypoints.prepare", *args, "--output-json", str(out)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                              env=venv_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"))
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(out.read_text())

    first, second = prepare_run(1), prepare_run(2)
    assert first["reused_from"] is None and second["reused_from"] == first["run_id"]
    assert first["manifest"]["columns"]["user"] == "customer"
    events = pd.read_csv(data)
    events.loc[5, "stars"] = 6 - events.loc[5, "stars"]
    events.to_csv(data, index=False)
    third = prepare_run(3)
    assert third["reused_from"] is None and third["manifest"]["data_sha256"] != first["manifest"]["data_sha256"]


def test_batch_recommendations_use_the_tables_own_ids(shop_model, tmp_path):
    from mfrec.serving.batch import write_recommendations

    rec, _, _ = shop_model
    counts = write_recommendations(rec, tmp_path / "all.parquet", k=5, progress=False)
    table = pd.read_parquet(tmp_path / "all.parquet")
    assert counts["rows"] == 500 * 5 and table["userId"].str.startswith("cust-").all()
    assert table["movieId"].str.startswith("SKU-").all()
    write_recommendations(rec, tmp_path / "some.parquet", users=["cust-0042", "someone-new"], k=2, progress=False)
    some = pd.read_parquet(tmp_path / "some.parquet")
    assert some["userId"].tolist() == ["cust-0042"] * 2 + ["someone-new"] * 2
    assert some["source"].tolist() == ["personal"] * 2 + ["popular"] * 2


@pytest.mark.slow
def test_a_clicks_pipeline_reports_ranking_metrics_and_says_why_there_is_no_rmse(tmp_path):
    import subprocess

    from helpers import VENV_BIN, venv_env
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = ["dataset=custom", f"data_path={SHOP / 'events.csv'}", "user_column=customer", "item_column=sku",
              "rating_column=", "timestamp_column=time", "search_trials=4", "n_clusters=4", "model_name=clicks"]
    cmd = [str(VENV_BIN / "mlflow"), "run", str(REPO_ROOT), "--env-manager", "local", "--experiment-name", "clicks"]
    for p in params:
        cmd += ["-P", p]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=venv_env(MLFLOW_TRACKING_URI=uri))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test_rmse skipped: implicit feedback" in done.stderr
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("clicks")
    (top,) = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert top.data.tags["mfrec.rating_metrics"].startswith("skipped: implicit feedback")
    assert "test_rmse" not in top.data.metrics and "val_rmse" not in top.data.metrics
    assert top.data.metrics["test_ndcg_at_10"] > top.data.metrics["baseline_popularity_ndcg_at_10"]
    assert "no test RMSE (implicit feedback)" in top.data.tags["mlflow.note.content"]
    (version,) = client.search_model_versions("name = 'clicks'")
    assert version.tags["champion_decision"].startswith("promoted: no champion yet (test_ndcg_at_10")


def test_awkward_tables_are_read_right_or_refused_clearly(tmp_path):
    """What a review of real tables turned up: ids spelled "NA", blank lines, separators with
    "|", sub-second and out-of-range times, checkpoint folders, clashing parts, empty tables,
    list-typed categories, ratings that are all equal once duplicates go."""
    plain = Columns(user="u", item="i", rating="r", timestamp="t")
    (tmp_path / "na.csv").write_text("u,i,r,t\nNA,null,4,1\nEU,N/A,2,2\n")
    assert set(read_custom(tmp_path / "na.csv", plain).ids.users) == {"NA", "EU"}
    (tmp_path / "blank.csv").write_text("u,i,r,t\n1,1,1,1\n\n2,2,x,2\n")
    with pytest.raises(DataError, match=r"blank.csv line 4: 'x'"):
        read_custom(tmp_path / "blank.csv", plain)
    (tmp_path / "big.csv").write_text("u,i,r,t\n1,1,1,99999999999999999999\n2,2,3,2024-01-01\n")
    with pytest.raises(DataError, match=r"'t'.*big.csv line 2"):
        read_custom(tmp_path / "big.csv", plain)
    stamps = pa.array([1704067200500000, 1704067201000000], type=pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"u": ["a", "b"], "i": ["x", "y"], "r": [1.0, 2.0], "t": stamps}), tmp_path / "us.parquet")
    assert read_custom(tmp_path / "us.parquet", plain).ratings["timestamp"].tolist() == [1704067200, 1704067201]
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"i": ["x", "y"], "title": ["X", "Y"], "genres": [["a", "b|c"], []]}), items)
    listed = read_custom(tmp_path / "us.parquet", replace(plain, items_path=str(items)))
    assert listed.items["genres"].tolist() == ["a|b/c", "(no genres listed)"]
    (tmp_path / "sep.csv").write_text("i,title,genres\nx,X,a || b\ny,Y,c\n")
    split = read_custom(tmp_path / "us.parquet", replace(plain, items_path=str(tmp_path / "sep.csv"), separator="||"))
    assert split.items["genres"].tolist() == ["a|b", "c"]
    parts = tmp_path / "parts"
    (parts / ".ipynb_checkpoints").mkdir(parents=True)
    (parts / "_temporary").mkdir()
    for folder in (parts, parts / ".ipynb_checkpoints", parts / "_temporary"):
        (folder / "a.csv").write_text("u,i,r,t\n1,1,1,1\n2,2,5,2\n")
    assert len(read_custom(parts, plain).ratings) == 2
    (tmp_path / "clash").mkdir()
    pq.write_table(pa.table({"u": [1], "i": ["x"], "r": [1.0], "t": [1]}), tmp_path / "clash" / "a.parquet")
    pq.write_table(pa.table({"u": ["b"], "i": ["y"], "r": [2.0], "t": [2]}), tmp_path / "clash" / "b.parquet")
    with pytest.raises(DataError, match="disagree on a column's type"):
        read_custom(tmp_path / "clash", plain)
    (tmp_path / "empty.csv").write_text("u,i,r,t\n")
    with pytest.raises(DataError, match="has no rows"):
        read_custom(tmp_path / "empty.csv", plain)
    (tmp_path / "same.csv").write_text("u,i,r,t\na,x,1,1\na,x,5,2\nb,y,5,3\n")
    with pytest.raises(DataError, match="every rating is 5 once duplicates are removed"):
        load_dataset("custom", tmp_path / "same.csv", columns=plain)
