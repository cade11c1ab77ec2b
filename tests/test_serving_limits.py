"""Hostile requests over real HTTP against ``mlflow models serve`` (docs/serving.md's limits):
what customers are never shown, answer sizes, repeated films, values pandas cannot hold,
how much of a request an error may echo, what MLflow answers before the model runs, and
answers that do not depend on the serving thread."""

from __future__ import annotations

import concurrent.futures
import json

import pandas as pd
import pytest
import requests

from test_serving import PIXAR, TIMEOUT, bad, invoke, ok

BIG = "1" + "0" * 308  # 10**308 written out: 309 digits, too large for a float64


def all_ratings(shared_zip) -> pd.DataFrame:
    from mfrec.data.parse import read_dataset

    return read_dataset(shared_zip).ratings


def test_recommend_never_shows_a_film_the_customer_rated(served_model, shared_zip):
    """Over 150 users and k=100, no recommended film is one the user rated anywhere in the
    ratings file (the served model is fit on all of them; test ratings included)."""
    ratings = all_ratings(shared_zip)
    users = [int(u) for u in sorted(ratings["userId"].unique())[::4][:150]]
    out = ok(served_model, {"inputs": {"userId": users}, "params": {"task": "recommend", "k": 100}}, "recommend")
    assert set(out["userId"]) == set(users) and (out["source"] == "personal").all()
    rated = set(zip(ratings["userId"], ratings["movieId"]))
    shown = set(zip(out["userId"], out["movieId"]))
    assert not shown & rated, sorted(shown & rated)[:5]
    with_seen = ok(served_model, {"inputs": {"userId": users[:5]},
                                  "params": {"task": "recommend", "k": 100, "exclude_seen": False}}, "recommend")
    assert set(zip(with_seen["userId"], with_seen["movieId"])) & rated  # the switch does something


def test_an_answer_over_the_row_cap_is_refused_before_scoring(served_model):
    """1,000 unknown users at k=1000 would be 10**6 rows: 400, with a short message."""
    cases = [
        ({"inputs": {"userId": list(range(10**8, 10**8 + 1000))}, "params": {"task": "recommend", "k": 1000}},
         "1,000 users x 1000 = 1,000,000 rows"),
        ({"inputs": {"movieId": [1, 2, 3] * 50 + list(range(4, 200))}, "params": {"task": "similar", "k": 1000}},
         "movies x 1000"),
        ({"inputs": {"userId": list(range(101)), "movieId": [1] * 101, "rating": [4.0] * 101},
          "params": {"task": "fold_in", "k": 1000}}, "101 customers x 1000 = 101,000 rows"),
    ]
    for body, fragment in cases:
        message = bad(served_model, body, fragment, "more than 100,000")
        assert len(message) < 1000
    # At the cap exactly: 100 users x k=1000 is answered.
    users = list(range(10**8, 10**8 + 100))
    out = ok(served_model, {"inputs": {"userId": users}, "params": {"task": "recommend", "k": 1000}}, "recommend")
    assert len(out) == 100_000


def test_a_film_named_many_times_counts_once(served_model):
    """One film repeated 40,490 times is one rating (the last given): the same answer as
    naming it once, never an empty list."""
    params = {"task": "fold_in", "k": 5}
    once = ok(served_model, {"inputs": {"movieId": [1], "rating": [5.0]}, "params": params}, "fold_in")
    many = ok(served_model, {"inputs": {"movieId": [1] * 40490, "rating": [1.0] * 40489 + [5.0]},
                             "params": params}, "fold_in")
    assert len(many) == 5 and (many["source"] == "personal").all()
    pd.testing.assert_frame_equal(once, many)
    # Repeats inside a real customer's list change nothing either.
    plain = ok(served_model, {"inputs": {"movieId": PIXAR, "rating": [5] * 5}, "params": params}, "fold_in")
    repeated = ok(served_model, {"inputs": {"movieId": PIXAR + [1] * 300, "rating": [5] * 305}, "params": params},
                  "fold_in")
    pd.testing.assert_frame_equal(plain, repeated)


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "inputs"])
@pytest.mark.parametrize("column", ["userId", "movieId", "rating"])
@pytest.mark.parametrize("value", [BIG, "1e400", "[[1, 2], [3, [4, [5]]]]"])
def test_values_pandas_cannot_hold_are_a_400_of_mfrec(served_model, fmt, column, value):
    """An integer of 309 digits, 1e400 (a float overflow) or nested lists in any id or rating
    column, in any format: mfrec's own 400 naming the column, no stack trace."""
    row = {"userId": "1", "movieId": "1", "rating": "4.0", column: value}
    names = ["userId", "movieId", "rating"]
    if fmt == "dataframe_split":
        table = '{"columns": %s, "data": [[%s]]}' % (json.dumps(names), ", ".join(row[n] for n in names))
    elif fmt == "dataframe_records":
        table = "[{%s}]" % ", ".join(f'"{n}": {row[n]}' for n in names)
    else:
        table = "{%s}" % ", ".join(f'"{n}": [{row[n]}]' for n in names)
    task = "predict" if column != "rating" else "fold_in"
    raw = '{"%s": %s, "params": {"task": "%s"}}' % (fmt, table, task)
    resp = invoke(served_model, None, raw=raw)
    assert resp.status_code == 400, resp.text[:500]
    answer = resp.json()
    assert "stack_trace" not in answer, answer["message"][:500]
    assert f"column '{column}' must hold" in answer["message"], answer["message"][:500]
    assert len(resp.content) < 1500


@pytest.mark.parametrize("where", ["userId", "movieId", "rating", "task", "column name"])
def test_no_error_echoes_more_than_about_a_kilobyte(served_model, where):
    """A 1 MB bad value, in whichever field the model checks, comes back cut short."""
    huge = "x" * 1_000_000
    columns = {"userId": [1], "movieId": [1], "rating": [4.0]}
    params = {"task": "fold_in"}
    if where in columns:
        columns[where] = [huge]
    elif where == "column name":
        columns = {huge: [1], huge + "y": [2]}
    else:
        params[where] = huge
    resp = invoke(served_model, {"inputs": columns, "params": params})
    assert resp.status_code == 400, resp.text[:300]
    assert len(resp.content) < 1500, resp.text[:300]
    assert "stack_trace" not in resp.json()


def test_fold_in_answers_are_the_same_from_every_thread(served_model):
    """One request sent 200 times from 8 concurrent clients: one answer, to the last bit."""
    body = {"inputs": {"movieId": PIXAR + [296, 593], "rating": [5, 5, 4.5, 5, 4, 2, 3.5]},
            "params": {"task": "fold_in", "k": 50}}

    def post(_):
        return requests.post(served_model.invocations, json=body, timeout=TIMEOUT).content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = set(pool.map(post, range(200)))
    assert len(answers) == 1


# What MLflow's server answers before the model runs (docs/serving.md lists each with the proxy
# setting that stops it); pinned so that an MLflow upgrade that changes them is noticed.

def test_deeply_nested_json_is_mlflows_own_500(served_model):
    resp = invoke(served_model, None, raw='{"inputs": ' + "[" * 1000 + "]" * 1000 + "}")
    assert resp.status_code == 500
    assert requests.get(served_model.url + "/ping", timeout=TIMEOUT).status_code == 200  # it survives


def test_malformed_json_is_echoed_whole_by_mlflow(served_model):
    body = '{"inputs": ' + "x" * 100_000
    resp = invoke(served_model, None, raw=body)
    assert resp.status_code == 400 and len(resp.content) > 100_000


@pytest.mark.parametrize("param", ["k", "exclude_seen"])
def test_a_param_of_the_wrong_type_is_echoed_whole_by_mlflow(served_model, param):
    """MLflow checks typed params against the signature before the model runs, and quotes the
    value: a 100 kB string as k comes back whole."""
    resp = invoke(served_model, {"inputs": {"userId": [1]}, "params": {"task": "recommend", param: "x" * 100_000}})
    assert resp.status_code == 400 and "Failed to validate type and shape" in resp.json()["message"]
    assert len(resp.content) > 100_000
