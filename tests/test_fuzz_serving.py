"""Property tests of the REST contract through the real ``mlflow models serve`` (``served_model``).

Whatever a client sends with ``Content-Type: application/json`` — mixed and wrong column types,
NaN/inf, negative and huge ids, empty frames, absurd ``k``, unknown tasks, random params,
random JSON structures — the answer is a 200 with a well-formed ``{"predictions": [...]}`` or a
400 whose JSON message says what is wrong. Never a 500, never a hang, never a crash of mfrec
disguised as a 400 (MLflow turns any non-MLflow exception from the model into a 400 saying
"unexpected error while evaluating the model"; that counts as a failure here).

``MFREC_FUZZ_EXAMPLES`` sets the number of examples per property (default keeps the file well
under a minute on the 2-core dev machine); the counts actually tried are printed at the end of
the session.
"""

from __future__ import annotations

import collections
import json
import math
import os

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("MFREC_FUZZ_EXAMPLES", "300"))
TIMEOUT = 30
TASKS = ("predict", "recommend", "similar", "fold_in")
NEEDS = {"predict": ("userId", "movieId"), "recommend": ("userId",), "similar": ("movieId",),
         "fold_in": ("movieId", "rating")}
COLUMNS = {
    "predict": {"userId", "movieId", "prediction", "known"},
    "recommend": {"userId", "rank", "movieId", "title", "genres", "score", "source"},
    "similar": {"movieId", "rank", "similar_movieId", "title", "genres", "score", "cluster"},
    "fold_in": {"userId", "rank", "movieId", "title", "genres", "score", "source"},
}
MAX_ID = 2**53  # ids must be below it (exclusive)
CRASH = "unexpected error while evaluating the model"
TRIED: collections.Counter = collections.Counter()

SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------------------------- strategies

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6))
junk = st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
ids = st.one_of(
    st.sampled_from([1, 2, 414, 318, 2571, 0, 10**9]),            # known and unknown, valid
    st.integers(min_value=0, max_value=MAX_ID - 1),                # valid
    st.integers(min_value=-(2**65), max_value=2**65),              # negative, huge
    st.sampled_from([MAX_ID - 1, MAX_ID, MAX_ID + 1, 2**63 - 1, 2**63, 2**64, -(2**63), 12.5, 1.0, -0.0, 1e308, -1]),
    st.floats(),                                                   # NaN, +-inf, fractions
    st.sampled_from(["1", " 5 ", "1e3", "abc", "", "NaN"]),
    st.none(), st.booleans(), junk,
)
ratings = st.one_of(
    st.sampled_from([0.5, 1, 3.5, 4, 5, 5.0]), st.floats(), st.integers(min_value=-10, max_value=10),
    st.sampled_from([6.0, -1, 0.49, 5.01, "5", "five"]), st.none(), st.booleans(), junk,
)
names = st.one_of(st.sampled_from(["userId", "movieId", "rating"]), st.text(max_size=6))
tasks = st.one_of(st.sampled_from(TASKS), st.text(max_size=8), st.integers(), st.none(), st.booleans())
ks = st.one_of(st.integers(min_value=1, max_value=30), st.integers(min_value=-5, max_value=1100),
               st.sampled_from([0, 1000, 1001, 2**31, 2**63, 2**64, -(2**63)]), st.floats(),
               st.text(max_size=4), st.booleans(), st.none())
flags = st.one_of(st.booleans(), st.text(max_size=5), st.integers(), st.none())
extra_params = st.dictionaries(st.text(max_size=4).filter(lambda s: s not in ("task", "k", "exclude_seen")),
                               scalars, max_size=2)  # unknown params are ignored
params = st.one_of(
    st.fixed_dictionaries({}, optional={"task": tasks, "k": ks, "exclude_seen": flags}),
    st.builds(lambda base, more: {**more, **base},
              st.fixed_dictionaries({"task": st.sampled_from(TASKS)},
                                    optional={"k": st.integers(1, 50), "exclude_seen": st.booleans()}),
              extra_params),
)


def column_values(name: str, n: int):
    element = ids if name in ("userId", "movieId") else ratings if name == "rating" else scalars
    homogeneous = {"userId": st.integers(0, 700), "movieId": st.sampled_from([1, 318, 2571, 6377, 10**9]),
                   "rating": st.sampled_from([0.5, 3.0, 5.0])}.get(name, scalars)
    # Mostly clean columns (so valid requests are common), sometimes anything goes per cell.
    clean = st.lists(homogeneous, min_size=n, max_size=n)
    return st.one_of(clean, clean, st.lists(element, min_size=n, max_size=n))


@st.composite
def requests_(draw):
    n = draw(st.one_of(st.integers(0, 3), st.integers(0, 12)))
    if draw(st.integers(0, 2)):  # a coherent request: a task and its columns, some cells may be bad
        task = draw(st.sampled_from(TASKS))
        cols = list(NEEDS[task]) + (["userId"] if task == "fold_in" and draw(st.booleans()) else [])
        cols = draw(st.permutations(cols + draw(st.lists(names.filter(lambda c: c not in cols), max_size=1))))
        p = draw(st.fixed_dictionaries({"task": st.just(task)},
                                       optional={"k": st.integers(1, 50), "exclude_seen": st.booleans()}))
        if task == "predict" and draw(st.booleans()):
            del p["task"]
        p.update(draw(st.one_of(st.just({}), extra_params,
                                st.fixed_dictionaries({}, optional={"task": tasks, "k": ks, "exclude_seen": flags}))))
        p = p or None
    else:  # anything
        cols = draw(st.lists(names, max_size=4, unique=True))
        p = draw(st.one_of(st.none(), params))
    data = {c: draw(column_values(c, n)) for c in cols}
    fmt = draw(st.sampled_from(["dataframe_split", "dataframe_records", "inputs", "inputs_records", "instances"]))
    rows = [[data[c][i] for c in cols] for i in range(n)]
    if fmt == "dataframe_split":
        body = {"dataframe_split": {"columns": cols, "data": rows}}
        if draw(st.integers(0, 9)) == 0 and cols:  # duplicate column names
            body["dataframe_split"]["columns"] = cols + [cols[0]]
            body["dataframe_split"]["data"] = [r + [r[0]] for r in rows]
    elif fmt in ("dataframe_records", "inputs_records", "instances"):
        body = {fmt.replace("inputs_records", "inputs"): [dict(zip(cols, r)) for r in rows]}
    else:
        body = {"inputs": data}
    if p is not None:
        body["params"] = p
    return body, data


json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=12)
structures = st.builds(
    lambda key, value, p: {key: value, **({} if p is None else {"params": p})},
    st.sampled_from(["dataframe_split", "dataframe_records", "inputs", "instances"]),
    json_values, st.one_of(st.none(), params, json_values),
)

# ------------------------------------------------------------------------------- oracle


def _valid_id(v) -> bool | None:
    """True/False when the contract decides, None when lenient parsing may go either way."""
    if isinstance(v, (list, dict)):
        return None  # MLflow may refuse it, or (one row of equal-length lists) it is a table
    if isinstance(v, bool) or v is None:
        return False
    if isinstance(v, int):
        return 0 <= v < MAX_ID
    if isinstance(v, float):
        return math.isfinite(v) and v == int(v) and 0 <= v < MAX_ID
    return None  # strings: numeric strings are accepted


def _valid_rating(v) -> bool | None:
    if isinstance(v, (list, dict)):
        return None
    if isinstance(v, bool) or v is None:
        return False
    if isinstance(v, (int, float)):
        return math.isfinite(v) and 0.5 <= v <= 5.0
    return None


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def expected(body: dict, data: dict) -> int | None:
    """200 or 400 when the contract says so for this request, None when it leaves room."""
    p = body.get("params", {})
    task, k, flag = p.get("task", "predict"), p.get("k", 10), p.get("exclude_seen", True)
    if not (isinstance(task, str) and task in TASKS):
        return 400
    if k is None or isinstance(k, (bool, float, str)) or not isinstance(flag, bool):
        return None  # MLflow's own param conversion decides
    if not 1 <= k <= 1000:
        return 400
    cols = body.get("dataframe_split", {}).get("columns", list(data)) if "dataframe_split" in body else list(data)
    if len(cols) != len(set(cols)):
        return None
    n = len(next(iter(data.values()))) if data else 0
    if n == 0:
        # No rows: columns are still known for split/inputs-dict; records carry none.
        if "dataframe_split" in body or isinstance(body.get("inputs"), dict):
            return 200 if all(c in data for c in NEEDS[task]) else 400
        return None
    if any(c not in data for c in NEEDS[task]):
        return 400
    checked = [(c, _valid_rating if c == "rating" else _valid_id) for c in NEEDS[task]]
    if task == "fold_in" and "userId" in data and not all(_missing(v) for v in data["userId"]):
        checked.append(("userId", _valid_id))  # optional; an all-null userId column means "absent"
    verdicts = []
    for c, check in checked:
        # instances: MLflow makes each column a numpy array first, so [1, false] arrives as [1, 0]
        verdicts += [None if "instances" in body and isinstance(v, bool) else check(v) for v in data[c]]
    if any(v is False for v in verdicts):
        return 400
    if any(isinstance(v, (list, dict)) for values in data.values() for v in values):
        return None  # MLflow itself may refuse nested values in any column (400 before the model)
    if all(v is True for v in verdicts):
        return 200
    return None


def check_answer(served, body, data=None):
    raw = json.dumps(body)  # allow_nan: NaN/Infinity literals, which MLflow's parser accepts
    resp = requests.post(served.invocations, data=raw, headers={"Content-Type": "application/json"},
                         timeout=TIMEOUT)
    TRIED[resp.status_code] += 1
    context = f"request {raw[:600]}\n-> {resp.status_code} {resp.text[:600]}"
    assert resp.status_code in (200, 400), context
    answer = resp.json()
    if resp.status_code == 400:
        assert isinstance(answer.get("message"), str) and answer["message"], context
        assert answer.get("error_code") in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"), context
        assert CRASH not in answer["message"], context
    else:
        assert list(answer) == ["predictions"] and isinstance(answer["predictions"], list), context
        task = body.get("params", {}).get("task", "predict") if isinstance(body.get("params"), dict) else "predict"
        for row in answer["predictions"]:
            assert set(row) == COLUMNS[task], context
        if task == "predict" and data:
            assert len(answer["predictions"]) == len(next(iter(data.values()))), context
            assert all(0.5 <= r["prediction"] <= 5.0 for r in answer["predictions"]), context
    if data is not None:
        want = expected(body, data)
        assert want in (None, resp.status_code), f"expected {want}: {context}"
    return resp


@pytest.fixture(autouse=True)
def report_count(request):
    """Each test's requests by HTTP status, in its report: conftest.py's terminal summary adds
    them up (also across ``-n 2`` workers, whose reports reach the controller)."""
    before = dict(TRIED)
    yield
    tried = {status: count - before.get(status, 0) for status, count in TRIED.items() if count != before.get(status, 0)}
    request.node.user_properties.append(("fuzz_requests", tried))
    request.node.user_properties.append(("fuzz_examples", EXAMPLES))


@SETTINGS
@given(case=requests_())
def test_tables_get_200_or_400(served_model, case):
    body, data = case
    check_answer(served_model, body, data)


@SETTINGS
@given(body=structures)
def test_arbitrary_json_gets_200_or_400(served_model, body):
    check_answer(served_model, body)


def test_server_still_healthy_after_fuzzing(served_model):
    assert requests.get(served_model.url + "/ping", timeout=TIMEOUT).status_code == 200
    assert served_model.proc.poll() is None
