"""The REST contract of docs/serving.md, over real HTTP against ``mlflow models serve``.

The ``served_model`` session fixture (conftest.py) logs the session's ``served_recommender``
(the default recipe fit on every prepared rating) as a models-from-code pyfunc in a sqlite store,
registers it (alias ``champion``) and serves ``models:/mfrec@champion`` with
``--env-manager local`` on a free loopback port, exactly as docs/serving.md tells users to.
"""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import requests

from helpers import REPO_ROOT

PIXAR = [1, 2355, 3114, 4886, 6377]  # Toy Story, A Bug's Life, Toy Story 2, Monsters Inc., Finding Nemo
FORMATS = ("dataframe_split", "dataframe_records", "inputs")
UNKNOWN = 10**9
TIMEOUT = 30
JSON = {"Content-Type": "application/json"}
COLUMNS = {
    "predict": {"userId", "movieId", "prediction", "known"},
    "recommend": {"userId", "rank", "movieId", "title", "genres", "score", "source"},
    "similar": {"movieId", "rank", "similar_movieId", "title", "genres", "score", "cluster"},
    "fold_in": {"userId", "rank", "movieId", "title", "genres", "score", "source"},
}
SERVING_MD = REPO_ROOT / "docs" / "serving.md"


def payload(fmt: str, columns: dict, params: dict | None = None) -> dict:
    """The same table in one of MLflow's JSON input formats."""
    names = list(columns)
    rows = [list(r) for r in zip(*columns.values())]
    if fmt == "dataframe_split":
        body = {"dataframe_split": {"columns": names, "data": rows}}
    elif fmt == "dataframe_records":
        body = {"dataframe_records": [dict(zip(names, r)) for r in rows]}
    elif fmt == "inputs":
        body = {"inputs": {k: list(v) for k, v in columns.items()}}
    else:
        raise ValueError(fmt)
    if params is not None:
        body["params"] = params
    return body


def invoke(served, body, headers=JSON, raw: str | bytes | None = None) -> requests.Response:
    data = raw if raw is not None else json.dumps(body)
    return requests.post(served.invocations, data=data, headers=headers, timeout=TIMEOUT)


def ok(served, body, task: str) -> pd.DataFrame:
    """POST, require 200 and ``{"predictions": [...]}`` with the task's columns; as a frame."""
    resp = invoke(served, body)
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}\n{served.log_tail()}"
    assert resp.headers["content-type"].startswith("application/json")
    out = resp.json()
    assert isinstance(out, dict) and list(out) == ["predictions"], out if len(resp.text) < 500 else list(out)
    assert isinstance(out["predictions"], list)
    frame = pd.DataFrame(out["predictions"])
    if len(frame):
        assert set(frame.columns) == COLUMNS[task], frame.columns
    return frame


def bad(served, body, *fragments: str, raw=None) -> str:
    """POST, require 400 with a JSON error whose message contains every fragment."""
    resp = invoke(served, body, raw=raw)
    assert resp.status_code == 400, f"{resp.status_code}: {resp.text[:500]}"
    err = resp.json()
    assert err["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"), err
    message = err["message"]
    assert "unexpected error while evaluating the model" not in message, message  # = mfrec crashed
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message[:800]!r}"
    return message


# ----------------------------------------------------------------------------------- basics

def test_ping_health_version(served_model):
    for path in ("/ping", "/health"):
        assert requests.get(served_model.url + path, timeout=TIMEOUT).status_code == 200
    version = requests.get(served_model.url + "/version", timeout=TIMEOUT)
    assert version.status_code == 200 and version.text.startswith("3.")


def test_server_serves_the_registered_champion(served_model):
    import mlflow

    from benchmarks.served import mlflow_uris

    with mlflow_uris(served_model.tracking_uri):
        version = mlflow.MlflowClient().get_model_version_by_alias("mfrec", "champion")
    assert str(version.version) == "1" and version.tags["champion_decision"].startswith("promoted")
    assert served_model.model_uri == "models:/mfrec@champion"


# ----------------------------------------------------------------------------------- tasks

@pytest.mark.parametrize("fmt", FORMATS)
def test_predict(served_model, served_recommender, fmt):
    users = [1, 1, UNKNOWN, 414, 414]
    movies = [1, UNKNOWN, 1, 2571, 318]
    out = ok(served_model, payload(fmt, {"userId": users, "movieId": movies}), "predict")
    assert out["userId"].tolist() == users and out["movieId"].tolist() == movies
    assert out["known"].tolist() == [True, False, False, True, True]
    assert out["prediction"].between(0.5, 5.0).all()
    local = served_recommender.predict(users, movies)  # same weights, in process
    np.testing.assert_allclose(out["prediction"], local["prediction"], rtol=1e-5)


def test_predict_is_clipped_to_the_rating_scale(served_model, served_recommender):
    # Find, in process, the pairs whose raw (unclipped) prediction leaves the scale the most.
    import torch

    rec = served_recommender
    with torch.no_grad():
        raw = (rec.model.user_factors @ rec.model.item_factors.T + rec.model.user_bias[:, None]
               + rec.model.item_bias[None, :] + rec.model.global_mean).numpy()
    hi, lo = np.unravel_index(raw.argmax(), raw.shape), np.unravel_index(raw.argmin(), raw.shape)
    assert raw[hi] > 5.0, "no raw prediction above 5: pick another way to test clipping"
    pairs = [hi] + ([lo] if raw[lo] < 0.5 else [])
    users = [int(rec.user_index.ids[u]) for u, _ in pairs]
    movies = [int(rec.items["movieId"].iloc[i]) for _, i in pairs]
    out = ok(served_model, payload("dataframe_split", {"userId": users, "movieId": movies}), "predict")
    assert out["known"].all()
    assert out["prediction"].tolist() == [5.0, 0.5][:len(pairs)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_recommend_excludes_training_ratings(served_model, small_split, fmt):
    seen_frame = pd.concat(small_split[:3])  # the served model was fit on every prepared rating
    users = [1, 2, 414]
    out = ok(served_model, payload(fmt, {"userId": users}, {"task": "recommend", "k": 20}), "recommend")
    assert out["userId"].drop_duplicates().tolist() == users
    assert (out.groupby("userId").size() == 20).all()
    assert (out["source"] == "personal").all()
    for user in users:
        mine = out[out.userId == user]
        assert mine["rank"].tolist() == list(range(1, 21))
        assert mine["score"].is_monotonic_decreasing
        seen = set(seen_frame.loc[seen_frame.userId == user, "movieId"])
        assert seen and not seen & set(mine["movieId"]), f"user {user} got movies they rated"


def test_recommend_exclude_seen_false_may_repeat_ratings(served_model, small_split):
    seen_frame = pd.concat(small_split[:2])
    out = ok(served_model, payload("inputs", {"userId": [1]}, {"task": "recommend", "k": 50, "exclude_seen": False}),
             "recommend")
    assert set(out["movieId"]) & set(seen_frame.loc[seen_frame.userId == 1, "movieId"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_user_gets_popular(served_model, fmt):
    out = ok(served_model, payload(fmt, {"userId": [UNKNOWN, 1]}, {"task": "recommend", "k": 5}), "recommend")
    unknown, known = out[out.userId == UNKNOWN], out[out.userId == 1]
    assert len(unknown) == 5 and (unknown["source"] == "popular").all()
    assert "Forrest Gump (1994)" in set(unknown["title"])
    assert len(known) == 5 and (known["source"] == "personal").all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_similar(served_model, fmt):
    out = ok(served_model, payload(fmt, {"movieId": [1, UNKNOWN, 318]}, {"task": "similar", "k": 10}), "similar")
    assert out["movieId"].drop_duplicates().tolist() == [1, 318]  # the unknown id is skipped
    for movie in (1, 318):
        mine = out[out.movieId == movie]
        assert len(mine) == 10 and mine["rank"].tolist() == list(range(1, 11))
        assert movie not in set(mine["similar_movieId"])
        assert mine["score"].is_monotonic_decreasing and mine["score"].max() <= 1.0 + 1e-6
    # The served model carries KMeans clusters (as the pipeline's does): real ids, not -1.
    assert out["cluster"].map(type).eq(int).all() and out["cluster"].between(0, 9).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_fold_in_new_customer(served_model, fmt):
    body = payload(fmt, {"movieId": PIXAR, "rating": [5.0] * 5}, {"task": "fold_in", "k": 10})
    out = ok(served_model, body, "fold_in")
    assert len(out) == 10 and (out["userId"] == 0).all() and (out["source"] == "personal").all()
    assert not set(out["movieId"]) & set(PIXAR)


def test_fold_in_pixar_fan_gets_animation(served_model):
    body = payload("dataframe_split", {"movieId": PIXAR, "rating": [5.0] * 5}, {"task": "fold_in", "k": 10})
    out = ok(served_model, body, "fold_in")
    assert out["genres"].str.contains("Animation|Children").mean() >= 0.5, out[["title", "genres"]]


def test_fold_in_groups_customers_by_user_id(served_model):
    body = payload("dataframe_records", {
        "userId": [7, 7, 7, 7, 7, 8, 9],
        "movieId": PIXAR + [2571, UNKNOWN],
        "rating": [5.0] * 5 + [4.5, 3.0],
    }, {"task": "fold_in", "k": 4})
    out = ok(served_model, body, "fold_in")
    assert out["userId"].drop_duplicates().tolist() == [7, 8, 9]
    assert (out.groupby("userId").size() == 4).all()
    assert out.set_index("userId")["source"].to_dict() == {7: "personal", 8: "personal", 9: "popular"}
    assert 2571 not in set(out.loc[out.userId == 8, "movieId"])


def test_unknown_ids_never_crash(served_model):
    big = [UNKNOWN, 2**53 - 1]  # the largest valid id (exactly representable as a float)
    pred = ok(served_model, payload("inputs", {"userId": big, "movieId": big}), "predict")
    assert not pred["known"].any() and pred["prediction"].between(0.5, 5.0).all()
    rec = ok(served_model, payload("inputs", {"userId": big}, {"task": "recommend", "k": 3}), "recommend")
    assert (rec["source"] == "popular").all() and len(rec) == 6
    sim = ok(served_model, payload("inputs", {"movieId": big}, {"task": "similar", "k": 3}), "similar")
    assert sim.empty
    fold = ok(served_model, payload("inputs", {"movieId": big, "rating": [4.0, 4.0]}, {"task": "fold_in", "k": 3}),
              "fold_in")
    assert (fold["source"] == "popular").all() and len(fold) == 3


@pytest.mark.parametrize("fmt", ["dataframe_split", "inputs"])
@pytest.mark.parametrize("task", ["predict", "recommend", "similar", "fold_in"])
def test_empty_frame_is_an_empty_answer(served_model, task, fmt):
    columns = {"predict": ["userId", "movieId"], "recommend": ["userId"], "similar": ["movieId"],
               "fold_in": ["movieId", "rating"]}[task]
    body = payload(fmt, {c: [] for c in columns}, {"task": task})
    resp = invoke(served_model, body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": []}


def test_empty_records_have_no_columns(served_model):
    # [] carries no column names, so the task's columns are missing.
    bad(served_model, {"dataframe_records": [], "params": {"task": "similar"}}, "missing: movieId")


def test_inputs_of_string_ids_are_a_table(served_model):
    # MLflow wraps a dict of all-string lists into ONE row of lists; mfrec unwraps it.
    out = ok(served_model, {"inputs": {"userId": ["1", "2"], "movieId": ["1", "318"]}}, "predict")
    assert out["userId"].tolist() == [1, 2] and out["movieId"].tolist() == [1, 318] and out["known"].all()


def test_k_bounds_are_inclusive(served_model, trained_small):
    one = ok(served_model, payload("inputs", {"userId": [1]}, {"task": "recommend", "k": 1}), "recommend")
    assert len(one) == 1
    most = ok(served_model, payload("inputs", {"userId": [1]}, {"task": "recommend", "k": 1000}), "recommend")
    assert len(most) == 1000


def test_row_limit_is_inclusive(served_model):
    n = 100_000
    body = {"dataframe_split": {"columns": ["userId", "movieId"], "data": [[1 + i % 600, 1] for i in range(n)]}}
    resp = invoke(served_model, body)
    assert resp.status_code == 200, resp.text[:500]
    assert len(resp.json()["predictions"]) == n


# ----------------------------------------------------------------------------------- bad requests

BAD_REQUESTS = {
    "unknown task": ({"inputs": {"userId": [1], "movieId": [1]}, "params": {"task": "dance"}},
                     ["unknown task 'dance'", "predict, recommend, similar, fold_in"]),
    "k=0": ({"inputs": {"userId": [1]}, "params": {"task": "recommend", "k": 0}},
            ["k must be an integer between 1 and 1000", "got 0"]),
    "k=1001": ({"inputs": {"userId": [1]}, "params": {"task": "recommend", "k": 1001}},
               ["k must be an integer between 1 and 1000", "got 1001"]),
    "k=-3": ({"inputs": {"userId": [1]}, "params": {"task": "recommend", "k": -3}},
             ["k must be an integer between 1 and 1000"]),
    "k='ten'": ({"inputs": {"userId": [1]}, "params": {"task": "recommend", "k": "ten"}}, ["'k'", "ten"]),
    "exclude_seen='maybe'": ({"inputs": {"userId": [1]}, "params": {"task": "recommend", "exclude_seen": "maybe"}},
                             ["exclude_seen"]),
    "predict without movieId": ({"inputs": {"userId": [1]}, "params": {"task": "predict"}},
                                ["task 'predict' needs column(s) userId, movieId", "missing: movieId"]),
    "predict without columns": ({"dataframe_records": [{"rating": 4.0}]}, ["missing: userId, movieId"]),
    "recommend without userId": ({"inputs": {"movieId": [1]}, "params": {"task": "recommend"}},
                                 ["task 'recommend' needs column(s) userId", "missing: userId"]),
    "similar without movieId": ({"inputs": {"userId": [1]}, "params": {"task": "similar"}},
                                ["task 'similar' needs column(s) movieId", "missing: movieId"]),
    "fold_in without rating": ({"inputs": {"movieId": PIXAR}, "params": {"task": "fold_in"}},
                               ["task 'fold_in' needs column(s) movieId, rating", "missing: rating"]),
    "non-integer id 12.5": ({"inputs": {"userId": [1, 12.5], "movieId": [1, 1]}},
                            ["column 'userId' must hold non-negative integer ids", "row 1 has 12.5"]),
    "non-integer movieId in similar": ({"dataframe_split": {"columns": ["movieId"], "data": [[2.5]]},
                                        "params": {"task": "similar"}}, ["column 'movieId'", "2.5"]),
    "string id": ({"inputs": {"userId": [1], "movieId": ["toy story"]}},
                  ["column 'movieId' must hold non-negative integer ids", "'toy story'"]),
    "null id": ({"dataframe_records": [{"userId": None, "movieId": 1}]},
                ["column 'userId' must hold non-negative integer ids"]),
    "negative id": ({"inputs": {"userId": [-5], "movieId": [1]}}, ["non-negative integer ids", "-5"]),
    "id 2**63": ({"inputs": {"userId": [2**63], "movieId": [1]}}, ["non-negative integer ids below 2**53"]),
    "id 2**53": ({"inputs": {"userId": [1, 2**53], "movieId": [1, 1]}}, ["row 1 has 9007199254740992"]),
    # 2**53 + 1 would read as 2**53 in float64 and be answered as another id: refused.
    "id 2**53 + 1": ({"dataframe_records": [{"userId": 2**53 + 1, "movieId": 1}]}, ["below 2**53"]),
    "bool id": ({"inputs": {"userId": [True], "movieId": [1]}}, ["non-negative integer ids", "True"]),
    "bool id among ints": ({"dataframe_records": [{"userId": 1, "movieId": 1}, {"userId": 2, "movieId": False}]},
                           ["column 'movieId'", "row 1 has False"]),
    "bool rating": ({"inputs": {"movieId": [1], "rating": [True]}, "params": {"task": "fold_in"}},
                    ["ratings between 0.5 and 5.0", "True"]),
    "rating 6.0": ({"inputs": {"movieId": [1, 2], "rating": [5.0, 6.0]}, "params": {"task": "fold_in"}},
                   ["column 'rating' must hold ratings between 0.5 and 5.0", "row 1 has 6.0"]),
    "rating -1": ({"inputs": {"movieId": [1], "rating": [-1]}, "params": {"task": "fold_in"}},
                  ["ratings between 0.5 and 5.0", "-1"]),
    "rating 'five'": ({"inputs": {"movieId": [1], "rating": ["five"]}, "params": {"task": "fold_in"}},
                      ["ratings between 0.5 and 5.0", "'five'"]),
    "ragged inputs": ({"inputs": {"userId": [1, 2], "movieId": [1]}}, ["same length"]),
    # MLflow's schema enforcement refuses it before the model runs (answer() refuses it too).
    "repeated column": ({"dataframe_split": {"columns": ["userId", "userId"], "data": [[-5, 1]]},
                         "params": {"task": "recommend"}}, ["Length of values"]),
    "scalar inputs": ({"inputs": 5}, []),
    "two input formats": ({"inputs": {"userId": [1]}, "dataframe_records": [{"userId": 1}]}, []),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_400_naming_the_problem(served_model, case):
    body, fragments = BAD_REQUESTS[case]
    bad(served_model, body, *fragments)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinite_ids_are_400(served_model, value):
    # Not strict JSON, but Python's parser (MLflow's) accepts these literals.
    raw = '{"dataframe_split": {"columns": ["userId", "movieId"], "data": [[%s, 1]]}}' % value
    bad(served_model, None, "column 'userId' must hold non-negative integer ids", raw=raw)
    raw = '{"inputs": {"movieId": [1], "rating": [%s]}, "params": {"task": "fold_in"}}' % value
    bad(served_model, None, "column 'rating' must hold ratings", raw=raw)


def test_too_many_rows_is_400_with_a_short_answer(served_model):
    """MLflow prints the whole request into the error of an `inputs` payload (2.9 MB for
    this one as records); mfrec's refusals keep its length instead."""
    n = 100_001
    for body in ({"dataframe_split": {"columns": ["userId", "movieId"], "data": [[1, 1]] * n}},
                 {"inputs": {"userId": [1] * n, "movieId": [1] * n}},
                 {"inputs": [{"userId": 1, "movieId": 1}] * n}):
        message = bad(served_model, body, "too many input rows: 100001", "at most 100,000")
        assert len(message) < 2000, message[:300]
    small = bad(served_model, {"inputs": {"userId": ["x"], "movieId": [1]}}, "row 0 has 'x'")
    assert small.startswith("Failed to predict data '")  # a short request is still shown


def test_too_many_fold_in_customers_is_400(served_model):
    n = 1001  # each customer is a separate fit: the cap keeps one request from taking minutes
    body = {"inputs": {"userId": list(range(n)), "movieId": [1] * n, "rating": [4.0] * n},
            "params": {"task": "fold_in"}}
    bad(served_model, body, "too many fold_in customers: 1001", "at most 1000")


def test_malformed_json_is_400(served_model):
    resp = invoke(served_model, None, raw='{"inputs": {"userId": [1], ')
    assert resp.status_code == 400 and "message" in resp.json()


# ----------------------------------------------------------------------------------- MLflow's quirks

def test_missing_content_type_is_mlflows_own_500(served_model):
    """MLflow 3.17.2 does ``content_type.split(";")`` on a missing header: 500, not 400.

    Nothing in the model can change that; docs/serving.md tells clients to send the header and
    operators to have their proxy set it. This test pins the observed behaviour so an MLflow
    upgrade that fixes it is noticed (and the docs updated).
    """
    body = json.dumps({"inputs": {"userId": [1], "movieId": [1]}})
    resp = requests.post(served_model.invocations, data=body, timeout=TIMEOUT)
    assert "content-type" not in {k.lower() for k in resp.request.headers}
    assert resp.status_code == 500
    # curl -d without -H sends application/x-www-form-urlencoded: 415, not an answer either.
    form = requests.post(served_model.invocations, data=body, timeout=TIMEOUT,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    # The server survives both.
    assert requests.get(served_model.url + "/ping", timeout=TIMEOUT).status_code == 200


# ----------------------------------------------------------------------------------- docs/serving.md

def curl_blocks(text: str) -> list[str]:
    """The fenced ```bash blocks of ``text`` that run curl."""
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    return [b for b in blocks if re.search(r"^\s*curl\b", b, flags=re.M)]


def test_curl_examples_in_docs_work(served_model):
    # Port 5002 is the shop example's model (tests/test_custom.py calls those).
    blocks = [b for b in curl_blocks(SERVING_MD.read_text()) if "127.0.0.1:5002" not in b]
    assert len(blocks) >= 5, "docs/serving.md lost its curl examples"
    port = served_model.url.rsplit(":", 1)[1]
    tasks_seen = set()
    for block in blocks:
        assert "127.0.0.1:5001" in block, block
        expect = int(m.group(1)) if (m := re.search(r"#\s*expect:\s*(\d{3})", block)) else 200
        command = block.replace("127.0.0.1:5001", f"127.0.0.1:{port}").rstrip().rstrip("\\").rstrip()
        command += " -w '\\n%{http_code}'"
        run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (block, run.stderr)
        body, _, status = run.stdout.rpartition("\n")
        assert int(status) == expect, (block, run.stdout[:500])
        answer = json.loads(body)
        if expect == 200:
            assert list(answer) == ["predictions"] and answer["predictions"], block
            task = m.group(1) if (m := re.search(r'"task"\s*:\s*"(\w+)"', block)) else "predict"
            assert set(answer["predictions"][0]) == COLUMNS[task], block
            tasks_seen.add(task)
        else:
            assert answer["message"], block
    assert tasks_seen == set(COLUMNS), f"docs/serving.md lacks a working example of {set(COLUMNS) - tasks_seen}"


def test_csv_body_is_refused_by_mlflow(served_model):
    # MLflow accepts text/csv only for typed column signatures; mfrec's columns are AnyType
    # (the model validates values itself), so MLflow answers 400 before the model runs.
    resp = requests.post(served_model.invocations, data="userId,movieId\n1,1\n1,318\n", timeout=TIMEOUT,
                         headers={"Content-Type": "text/csv"})
    assert resp.status_code == 400 and "CSV" in resp.json()["message"]


def test_readme_curl_examples_work(served_model, small_split):
    """README.md shows one curl request per task; each answers with that task's columns, and
    a known user's recommendations hold no film they rated (in any split)."""
    rated = pd.concat(small_split[:3])
    blocks = [b for b in curl_blocks((REPO_ROOT / "README.md").read_text()) if "127.0.0.1:5002" not in b]
    port = served_model.url.rsplit(":", 1)[1]
    tasks_seen = set()
    for block in blocks:
        command = block[re.search(r"^\s*curl\b", block, flags=re.M).start():]  # skip a serve line
        command = command.replace("127.0.0.1:5001", f"127.0.0.1:{port}")
        run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (block, run.stderr)
        rows = json.loads(run.stdout)["predictions"]
        task = re.search(r'"task"\s*:\s*"(\w+)"', block).group(1)
        assert rows and set(rows[0]) == COLUMNS[task], block
        if task in ("recommend", "fold_in"):
            assert len(rows) == 5 and {r["source"] for r in rows} == {"personal"}, block
        if task == "recommend":
            user = rows[0]["userId"]
            assert not {r["movieId"] for r in rows} & set(rated.loc[rated.userId == user, "movieId"]), block
        tasks_seen.add(task)
    assert tasks_seen == set(COLUMNS), f"README.md lacks a curl example of {set(COLUMNS) - tasks_seen}"


def test_pyfunc_in_process_returns_the_same_rows_as_rest(served_model):
    """docs/serving.md: ``load_model(...).predict`` gives the REST rows as a list of dicts."""
    import mlflow
    from benchmarks.served import mlflow_uris

    with mlflow_uris(served_model.tracking_uri):
        model = mlflow.pyfunc.load_model(served_model.model_uri)
    params = {"task": "recommend", "k": 3}
    rows = model.predict(pd.DataFrame({"userId": [1, 10**9]}), params=params)
    assert isinstance(rows, list) and len(rows) == 6
    assert [r["source"] for r in rows] == ["personal"] * 3 + ["popular"] * 3
    over_http = invoke(served_model, {"dataframe_records": [{"userId": 1}, {"userId": 10**9}], "params": params})
    assert over_http.json()["predictions"] == rows


def test_answer_refuses_a_repeated_column_name(trained_small):
    """Called directly (not through MLflow's schema enforcement), the model still refuses a
    column given twice instead of silently using one of them."""
    from mfrec.errors import RequestError
    from mfrec.serving.contract import answer

    frame = pd.DataFrame([[-5, 1]], columns=["userId", "userId"])
    with pytest.raises(RequestError, match=r"repeated column name\(s\): userId"):
        answer(trained_small.recommender, frame, {"task": "recommend"})
