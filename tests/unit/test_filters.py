"""The jsonb filter language -> SQL translator (plpython/indb_runtime/filters.py), without Postgres.

What a user cares about: keys and values never appear in the SQL text (no injection), every operator
maps to the intended SQL, and a bad filter is an error that points at the bad key or operator.
The same filters run against real Postgres in tests/sql/test_search_filters.py.
"""

import json

import pytest

from indb_runtime import filters
from indb_runtime.errors import IndbRuntimeError


def t(f):
    return filters.translate(f, param=3)


def test_none_and_empty_filter_match_everything():
    assert t(None) == ("true", [])
    assert t({}) == ("true", [])


def test_equality_is_containment_with_all_values_in_the_parameter():
    sql, params = t({"lang": "en"})
    assert sql == "metadata operator(ml.@>) ($3->0)"
    assert params == [{"lang": "en"}]


def test_keys_and_values_with_sql_metacharacters_stay_out_of_the_sql():
    evil = "x'); drop table ml.collections; --"
    sql, params = t({evil: {"$gt": 1}, "tenant": evil, "$or": [{'a"b': evil}, {"k": {"$in": [evil, 2]}}]})
    assert evil not in sql and "drop" not in sql and '"' not in sql and "'x" not in sql
    assert evil in json.dumps(params)
    # only fixed templates: $3->N references, operators, and SQL keywords
    assert set(sql) <= set("abcdefghijklmnopqrstuvwxyz_ ()$0123456789->@=<'?,:.")


def test_numbers_compare_numerically_and_timestamps_as_timestamps():
    sql, params = t({"year": {"$gte": 2020, "$lt": 2024}})
    assert "end) >= ($3->>1)::numeric" in sql and "end) < ($3->>3)::numeric" in sql
    assert params == ["year", 2020, "year", 2024]
    sql, params = t({"published": {"$gt": "2024-05-01T00:00:00Z"}})
    assert sql == "ml._jsonb_timestamptz(metadata -> ($3->>0)) > ($3->>1)::timestamptz"
    sql, params = t({"created_at": {"$lte": "2024-01-31"}})
    assert sql == "created_at <= ($3->>0)::timestamptz" and params == ["2024-01-31"]


def test_tenant_and_id_are_columns():
    assert t({"tenant": "acme"}) == ("tenant = ($3->>0)", ["acme"])
    assert t({"tenant": {"$in": ["a", "b"]}}) == ("tenant in (($3->>0), ($3->>1))", ["a", "b"])
    assert t({"metadata.tenant": "x"}) == ("metadata operator(ml.@>) ($3->0)", [{"tenant": "x"}])


def test_in_nin_ne_exists_and_logic():
    sql, params = t({"color": {"$in": ["red", "blue"]}})
    assert sql == "(metadata operator(ml.@>) ($3->0) or metadata operator(ml.@>) ($3->1))"
    assert params == [{"color": "red"}, {"color": "blue"}]
    sql, _ = t({"color": {"$nin": ["red"]}})
    assert sql == "(not (metadata operator(ml.@>) ($3->0)))"
    sql, _ = t({"color": {"$ne": "red"}})
    assert sql == "(not metadata operator(ml.@>) ($3->0))"
    sql, _ = t({"color": {"$exists": False}})
    assert sql == "(not metadata operator(ml.?) ($3->>0))"
    sql, _ = t({"$or": [{"a": 1}, {"$and": [{"b": 2}, {"$not": {"c": 3}}]}]})
    assert (
        sql
        == "(metadata operator(ml.@>) ($3->0) or (metadata operator(ml.@>) ($3->1) and (not coalesce(metadata operator(ml.@>) ($3->2), false))))"
    )
    sql, _ = t({"a": 1, "b": 2})
    assert sql == "(metadata operator(ml.@>) ($3->0) and metadata operator(ml.@>) ($3->1))"


@pytest.mark.parametrize(
    "flt, where, words",
    [
        ({"price": {"$gtx": 1}}, "$.price.$gtx", 'unknown operator "$gtx"'),
        ({"$nor": []}, "$.$nor", "unknown logical operator"),
        ({"$or": {"a": 1}}, "$.$or", "non-empty array"),
        ({"$and": [{"a": 1}, {"b": {"$in": "x"}}]}, "$.$and[1].b.$in", "non-empty array"),
        ({"t": {"$gt": "yesterday"}}, "$.t.$gt", "ISO-8601"),
        ({"t": {"$gt": True}}, "$.t.$gt", "number or an ISO-8601"),
        ({"tenant": {"$gt": "a"}}, "$.tenant.$gt", "tenant is text"),
        ({"tenant": 5}, "$.tenant.$eq", "tenant is text"),
        ({"a": {"$eq": 1, "plain": 2}}, "$.a", "do not mix"),
        ({"a": {"$exists": "yes"}}, "$.a.$exists", "true or false"),
        ([1, 2], "$", "JSON object"),
    ],
)
def test_bad_filters_name_the_place_and_the_problem(flt, where, words):
    with pytest.raises(IndbRuntimeError) as e:
        t(flt)
    assert e.value.sqlstate == "22023"
    assert f"at {where}:" in e.value.message and words in e.value.message
    assert "$in" in e.value.hint


def test_filter_size_is_bounded():
    deep = {"a": 1}
    for _ in range(40):
        deep = {"$not": deep}
    with pytest.raises(IndbRuntimeError, match="too deep"):
        t(deep)
    with pytest.raises(IndbRuntimeError, match="at most 1000 values"):
        t({"a": {"$in": list(range(1001))}})
    # a value compared by containment (ml.@>, leakproof: evaluated ahead of the tenant policy) stays shallow
    value = {"x": 1}
    for _ in range(16):
        value = {"x": value}
    with pytest.raises(IndbRuntimeError, match="nested more than 16 levels"):
        t({"a": value})
    with pytest.raises(IndbRuntimeError, match="nested more than 16 levels"):
        t({"a": {"$in": [1, [value]]}})
    assert t({"a": value["x"]})[0] == "metadata operator(ml.@>) ($3->0)"


def test_json_text_round_trip():
    out = json.loads(filters.translate_json('{"a": {"$lte": 3.5}}', 2))
    assert out["params"] == ["a", 3.5] and "$2->>1" in out["sql"]
