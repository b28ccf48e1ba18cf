"""Preprocessing without Postgres: impute/scale/encode fitted on training columns and replayed exactly at
prediction (also after a JSON round trip of the fitted state), with clear errors for bad columns."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from indb_runtime.errors import IndbRuntimeError
from indb_runtime.preprocess import Preprocessor, column_kind, parse_vector, validate_options

TYPES = {
    "x": "double precision",
    "n": "integer",
    "flag": "boolean",
    "city": "text",
    "v": "vector",
    "arr": "double precision[]",
}


def data():
    return {
        "x": [1.0, 2.0, None, 4.0],
        "n": [10, 20, 30, 40],
        "flag": [True, False, True, None],
        "city": ["a", "b", "a", None],
        "v": ["[1,2]", "[3,4]", None, "[5,6]"],
        "arr": [[1, 1], [2, 2], [3, 3], [4, 4]],
    }


OPTS = {
    "x": {"impute": "mean", "scale": "standard"},
    "n": {"scale": "min_max"},
    "flag": {"impute": "mode"},
    "city": {"encode": "one_hot", "impute": "mode"},
    "v": {"impute": "median"},
    "arr": {"scale": "robust"},
}


def test_fit_transform_expands_and_imputes():
    pre, X = Preprocessor.fit(data(), TYPES, OPTS)
    assert pre.feature_names == ["x", "n", "flag", "city=a", "city=b", "v[1]", "v[2]", "arr[1]", "arr[2]"]
    assert pre.groups.count("city") == 2 and pre.groups.count("v") == 2
    # x: NULL -> mean of (1,2,4) = 7/3, then standardized: the column has mean 0
    assert X[:, 0].mean() == pytest.approx(0, abs=1e-12) and X[:, 0].std() == pytest.approx(1)
    # n: min_max to [0, 1]
    assert X[:, 1].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    # flag: NULL -> mode (True); city NULL -> mode "a"
    assert X[:, 2].tolist() == [1, 0, 1, 1]
    assert X[:, 3:5].tolist() == [[1, 0], [0, 1], [1, 0], [1, 0]]
    # vector NULL -> element-wise median of the present rows
    assert X[2, 5:7].tolist() == [3, 4]


def test_state_round_trips_through_json_and_replays_exactly():
    pre, X = Preprocessor.fit(data(), TYPES, OPTS)
    again = Preprocessor(json.loads(json.dumps(pre.state)))
    assert np.array_equal(again.transform(data(), 4), X)
    # one row in any form gives the same numbers as in the training matrix
    one = {k: [v[1]] for k, v in data().items()}
    assert np.allclose(again.transform(one, 1)[0], X[1])


def test_unknown_category_and_target_encoding():
    y = np.array([1.0, 5.0, 1.0, 1.0])
    pre, X = Preprocessor.fit({"city": ["a", "b", "a", "a"]}, {"city": "text"}, {"city": {"encode": "target"}}, y=y)
    gm = y.mean()
    # smoothed mean for "b": (5 + 10 * gm) / 11
    assert X[1, 0] == pytest.approx((5 + 10 * gm) / 11)
    assert pre.transform({"city": ["zzz"]}, 1)[0, 0] == pytest.approx(gm)
    pre2, _ = Preprocessor.fit({"city": ["a", "b"]}, {"city": "text"}, {"city": {"encode": "ordinal"}})
    assert pre2.transform({"city": ["b", "zzz"]}, 2)[:, 0].tolist() == [1.0, -1.0]
    pre3, _ = Preprocessor.fit({"city": ["a", "b"]}, {"city": "text"}, {"city": {"encode": "one_hot"}})
    assert pre3.transform({"city": ["zzz"]}, 1).tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize(
    "cols,types,opts,sqlstate,pattern",
    [
        ({"t": ["a", "b"]}, {"t": "text"}, {}, "22023", 'text column "t" needs an encoding'),
        ({"x": [1.0, None]}, {"x": "double precision"}, {}, "22004", 'column "x" has 1 NULL'),
        ({"x": [None, None]}, {"x": "double precision"}, {"x": {"impute": "mean"}}, "22004", "NULL in every row"),
        ({"x": [1.0, float("nan")]}, {"x": "double precision"}, {}, "22000", 'column "x" holds nan in row 2'),
        ({"x": [1.0, float("inf")]}, {"x": "double precision"}, {}, "22000", "holds inf"),
        ({"v": ["[1,2]", "[1,2,3]"]}, {"v": "vector"}, {}, "22000", 'column "v" has 3 elements in row 2'),
        ({"j": [1, 2]}, {"j": "jsonb"}, {}, "42804", "has type jsonb, which cannot be a feature"),
    ],
)
def test_bad_columns_are_named(cols, types, opts, sqlstate, pattern):
    with pytest.raises(IndbRuntimeError, match=pattern) as e:
        Preprocessor.fit(cols, types, opts)
    assert e.value.sqlstate == sqlstate and (e.value.hint or sqlstate == "42804")


def test_null_at_prediction_without_impute_is_refused():
    pre, _ = Preprocessor.fit({"x": [1.0, 2.0]}, {"x": "double precision"}, {})
    with pytest.raises(IndbRuntimeError, match='column "x" has 1 NULL value.*input'):
        pre.transform({"x": [None]}, 1)
    assert pre.fast_row([2.0]).tolist() == [[2.0]]
    with pytest.raises(IndbRuntimeError, match="takes 1 features but 2"):
        pre.fast_row([1.0, 2.0])


def test_column_kinds_and_vectors():
    assert column_kind("numeric(10,2)") == "numeric" and column_kind("vector(384)") == "vector"
    assert column_kind("public.vector(384)") == "vector" and column_kind("extensions.vector") == "vector"
    assert column_kind("real[]") == "array" and column_kind("text[]") is None
    assert column_kind("character varying(20)") == "text" and column_kind("mood", is_enum=True) == "text"
    assert parse_vector("[1, 2.5,-3]") == [1.0, 2.5, -3.0] and parse_vector(None) is None
    assert math.isclose(parse_vector([1, 2])[1], 2.0)


def test_unknown_categories_are_ignored_by_default_and_refused_when_asked():
    data = {"c": ["a", "b", "a", "b"], "x": [1.0, 2.0, 3.0, 4.0]}
    types = {"c": "text", "x": "double precision"}
    pre, _ = Preprocessor.fit(data, types, {"c": {"encode": "one_hot"}})
    assert pre.transform({"c": ["zz"], "x": [1.0]}, 1)[0, :2].tolist() == [0.0, 0.0]
    strict, _ = Preprocessor.fit(data, types, {"c": {"encode": "ordinal", "unknown": "error"}})
    assert strict.transform({"c": ["b"], "x": [1.0]}, 1)[0, 0] == 1.0
    with pytest.raises(IndbRuntimeError, match="category 'zz', which the model never saw") as e:
        strict.transform({"c": ["zz"], "x": [1.0]}, 1)
    assert e.value.sqlstate == "22023" and "known categories: a, b" in e.value.detail and "ignore" in e.value.hint
    assert strict.describe()["columns"][0]["unknown"] == "error"
    with pytest.raises(IndbRuntimeError, match='invalid unknown "maybe"'):
        validate_options({"c": {"unknown": "maybe"}}, ["c"])
    with pytest.raises(IndbRuntimeError, match='does not apply to numeric column "x"'):
        Preprocessor.fit(data, types, {"c": {"encode": "one_hot"}, "x": {"unknown": "error"}})


def test_huge_integers_from_json_are_a_range_error_not_an_overflow():
    pre, _ = Preprocessor.fit({"x": [1.0, 2.0]}, {"x": "double precision"})
    with pytest.raises(IndbRuntimeError, match='column "x"') as e:
        pre.transform({"x": [10**309]}, 1)
    assert e.value.sqlstate == "22003"


def _encode_row_by_row(spec: dict, values: list, n: int) -> np.ndarray:
    """0.2.0's text encoding, one value at a time: the reference the vectorized encoder must match."""
    vals = [spec["impute_value"] if v is None else str(v) for v in values]
    cats = spec["categories"]
    if spec["encode"] == "one_hot":
        index = {c: j for j, c in enumerate(cats)}
        m = np.zeros((n, len(cats)))
        for i, v in enumerate(vals):
            j = index.get(v)
            if j is not None:
                m[i, j] = 1.0
        return m
    if spec["encode"] == "ordinal":
        rank = {c: float(j) for j, c in enumerate(cats)}
        return np.array([rank.get(v, -1.0) for v in vals]).reshape(n, 1)
    tm, d = spec["target_means"], spec["target_default"]
    return np.array([tm.get(v, d) for v in vals], dtype=np.float64).reshape(n, 1)


@pytest.mark.parametrize("encode", ["one_hot", "ordinal", "target"])
def test_vectorized_text_encoding_equals_row_by_row(encode):
    """ml.predict_batch encodes 50,000 values at a time with one dict lookup each; every kind of value (known,
    unseen, NULL, a number that equals a category's text, a JSON list) lands exactly where the row-by-row
    encoder put it."""
    rng = np.random.RandomState(7)
    train = [str(c) for c in rng.choice(["a", "b", "c", "7", "d"], 400)] + [None] * 5
    y = rng.rand(len(train))
    pre, _ = Preprocessor.fit({"city": train}, {"city": "text"}, {"city": {"encode": encode, "impute": "mode"}}, y=y)
    spec = pre.state["columns"][0]
    pool = ["a", "b", "c", "d", "7", "zz", "", None, 7, 7.0, True, ["a"], {"k": 1}]
    values = [pool[i] for i in rng.randint(0, len(pool), 3000)]
    got = pre.transform({"city": values}, len(values))
    want = _encode_row_by_row(spec, values, len(values))
    assert got.shape == want.shape and np.array_equal(got, want)
    # no unhashable value: the vectorized path alone
    plain = [v for v in values if not isinstance(v, (list, dict))]
    assert np.array_equal(pre.transform({"city": plain}, len(plain)), _encode_row_by_row(spec, plain, len(plain)))
    assert pre.transform({"city": []}, 0).shape[0] == 0
    # a few rows (ml.predict) take the row-by-row loop; the same answers
    for k in range(0, 3000, 29):
        few = values[k : k + 7]
        assert np.array_equal(pre.transform({"city": few}, len(few)), want[k : k + len(few)])


def test_vectorized_text_encoding_keeps_the_errors():
    pre, _ = Preprocessor.fit(
        {"city": ["a", "b", "a"]}, {"city": "text"}, {"city": {"encode": "one_hot", "unknown": "error"}}
    )
    for rows in (["a", "q", "r"], ["a"] * 100 + ["q", "r"]):  # the row loop and the vectorized path
        with pytest.raises(IndbRuntimeError, match="holds the category 'q', which the model never saw") as e:
            pre.transform({"city": rows}, len(rows))
        assert e.value.sqlstate == "22023"
    strict, _ = Preprocessor.fit(
        {"city": ["a", "b"]}, {"city": "text"}, {"city": {"encode": "ordinal", "impute": "error"}}
    )
    for rows in ([None, "a", None], [None, "a", None] + ["b"] * 100):
        with pytest.raises(IndbRuntimeError, match=r'"city" has 2 NULL value\(s\) in the input') as e:
            strict.transform({"city": rows}, len(rows))
        assert e.value.sqlstate == "22004"
