"""The search_runs filter parser without a database: MLflow syntax in, parameterized SQL out."""

from __future__ import annotations

import re

import pytest
from fakeplpy import FakePlpy

from indb_runtime import search_runs as sr
from indb_runtime.errors import IndbRuntimeError


def build(f, order_by=None, experiments=None, max_results=100):
    return sr.build(experiments, f, order_by, max_results)


def test_the_issue_example_becomes_four_parameterized_conditions():
    sql, params = build(
        "metrics.rmse < 0.5 and params.depth = '6' and tags.team = 'x' and attributes.status = 'FINISHED'",
        experiments=["exp"],
    )
    values = [v for v, _ in params]
    assert values == [["exp"], "rmse", 0.5, "depth", "6", "team", "x", "FINISHED", 100]
    # every user value is a $n placeholder: none of them appears in the SQL text
    for v in ("rmse", "depth", "'6'", "team", "FINISHED"):
        assert v not in sql
    assert (
        "(s.metrics ->> $2)::float8 < $3" in sql
        and "s.params operator(ml.@>) jsonb_build_object($4::text, $5::text)" in sql
    )
    assert "s.tags operator(ml.@>) jsonb_build_object($6::text, $7::text)" in sql and "r.status = $8" in sql
    assert re.search(r"limit \$9\s*$", sql)
    # the reference SQL over the tables (mirror=False) binds the same values in the same order
    ref, ref_params = sr.build(
        ["exp"],
        "metrics.rmse < 0.5 and params.depth = '6' and tags.team = 'x' and attributes.status = 'FINISHED'",
        None,
        100,
        mirror=False,
    )
    assert ref_params == params
    assert "m.value < $3" in ref and "p.value = $5" in ref and "registry.run_search" not in ref


def test_injection_attempts_stay_values_or_are_syntax_errors():
    evil = "x'; drop table registry.runs; --"
    sql, params = build(f'params.depth = "{evil}"')
    assert "drop table" not in sql and evil in [v for v, _ in params]
    sql, params = build("tags.`a'; delete from x` = 'y'")
    assert "delete" not in sql and "a'; delete from x" in [v for v, _ in params]
    for bad in [
        "metrics.rmse < 0.5; drop table registry.runs",
        "metrics.rmse < 0.5 -- x",
        "params.depth = '6' union select 1",
        "metrics.rmse < (select 1)",
    ]:
        with pytest.raises(IndbRuntimeError) as e:
            build(bad)
        assert e.value.sqlstate == "42601"


@pytest.mark.parametrize(
    "text, pos, words",
    [
        ("metrics.rmse < 'a'", 16, "number"),
        ("params.depth = 6", 16, "strings"),
        ("foo.x = 1", 1, "unknown entity"),
        ("attributes.bogus = 'x'", 12, "unknown attribute"),
        ("metrics.rmse <", 15, "expected a value"),
        ("metrics.rmse < 0.5 and", 23, "expected a field"),
        ("metrics.rmse < 0.5 params.x = '1'", 20, "expected AND, OR"),
        ("(metrics.rmse < 0.5", 20, "')'"),
        ("metrics.rmse like 'a'", 14, "does not apply to metrics"),
        ("params.x ~ 'a'", 10, "unexpected character"),
    ],
)
def test_errors_point_at_the_problem(text, pos, words):
    with pytest.raises(IndbRuntimeError) as e:
        build(text)
    err = e.value
    assert err.sqlstate == "42601"
    assert f"position {pos}:" in err.message and words in err.message
    first, caret = err.detail.split("\n")
    assert first == text and caret.index("^") == pos - 1
    assert "metrics.rmse < 0.5" in err.hint


def test_or_parentheses_in_like_and_null_tests():
    sql, params = build(
        "(metrics.acc >= 0.9 or params.model IN ('xgb', 'lgbm')) and tags.team != 'ml' "
        "and run_name ILIKE 'base%' and tags.note IS NULL and params.seed IS NOT NULL"
    )
    assert " or " in sql and "= any($" in sql and "ilike" in sql
    assert "not s.tags ? $" in sql and "s.params ? $" in sql
    assert ["xgb", "lgbm"] in [v for v, _ in params]


def test_keys_with_dots_dashes_and_quotes():
    _, params = build("tags.mlflow.runName = 'a' and metrics.f1-score > 0 and params.\"learning rate\" = '0.1'")
    keys = [v for v, _ in params]
    assert "mlflow.runName" in keys and "f1-score" in keys and "learning rate" in keys


def test_times_and_datasets():
    sql, params = build("attributes.start_time > 1700000000000 and datasets.digest = 'abc'")
    assert "to_timestamp(" in sql and 1700000000.0 in [v for v, _ in params]
    assert "registry.run_inputs" in sql
    sql, params = build("attributes.end_time < '2026-01-01'")
    assert ("2026-01-01", "timestamptz") in params


def test_order_by_and_limits():
    sql, params = build("", order_by=["metrics.rmse ASC", "params.depth desc", "attributes.start_time"])
    assert "asc nulls last" in sql and "desc nulls last" in sql
    assert sql.index("(s.metrics ->> $1)::float8") < sql.index("(s.params ->> $2)")
    with pytest.raises(IndbRuntimeError, match="order_by"):
        build("", order_by=["metrics.rmse sideways"])
    with pytest.raises(IndbRuntimeError, match="max_results"):
        build("", max_results=0)
    with pytest.raises(IndbRuntimeError, match="max_results"):
        build("", max_results=10**6)


def test_empty_filter_matches_everything():
    sql, params = build("   ")
    assert "where true" in sql and params == [(100, "int4")]


def test_execute_prepares_once_per_filter_shape():
    from indb_runtime import spi

    spi.clear_plans()
    plpy = FakePlpy(
        answers={
            "from registry.run_search": [{"run_id": "u"}],
            "current_setting('plan_cache_mode')": [{"v": "auto"}],
            "from pg_class": [{"n": 1e6, "t": None}],
        }
    )
    prepared = []
    real_prepare = plpy.prepare
    plpy.prepare = lambda q, t=None: prepared.append(q) or real_prepare(q, t)
    out1 = sr.execute(plpy, None, "metrics.rmse < 0.5", None, 10)
    out2 = sr.execute(plpy, None, "metrics.rmse < 0.9", None, 10)
    sr.execute(plpy, None, "metrics.acc < 0.9 and params.a = 'b'", None, 10)
    assert out1 == out2 == [{"run_id": "u"}]
    searches = [q for q in prepared if "from registry.run_search s" in q]
    assert len(searches) == 2  # same shape, different values -> one plan (spi's cache)
    runs = [args for q, args in plpy.executed if "from registry.run_search s" in str(q)]
    assert runs[0] == ["rmse", 0.5, 10] and runs[1] == ["rmse", 0.9, 10]
    # without order_by the search runs with a plan made for its values, and the setting is put back
    sets = [args for q, args in plpy.executed if "set_config('plan_cache_mode'" in str(q)]
    assert sets[:2] == [None, ["auto"]]


@pytest.mark.parametrize(
    ("runs", "setting", "order_by", "walks"),
    [
        (1000, None, ["metrics.rmse ASC"], False),  # a small registry: the general query (any caller)
        (1000, "1000000000", ["metrics.rmse ASC"], False),  # the setting decides alone
        (1000, "0", ["metrics.rmse ASC"], True),
        (1e6, None, ["params.depth"], False),  # only an order_by on a metric has a walk
        (1e6, None, ["metrics.rmse ASC"], True),
    ],
)
def test_the_metric_walk_is_taken_by_size_or_setting(runs, setting, order_by, walks):
    """The metric walk (latest_metrics' key and value index, then each run by its key) answers an order_by on a
    metric from LARGE runs on, and as indb.search_runs_walk_from says when that is set."""
    from indb_runtime import spi

    spi.clear_plans()
    plpy = FakePlpy(
        answers={
            "walk_value": [],  # the walk finds fewer than max_results: the general query answers
            "from registry.run_search": [{"run_id": "u"}],
            "from pg_class": [{"n": runs, "t": setting}],
        }
    )
    out = sr.execute(plpy, None, "params.depth = '6'", order_by, 10)
    assert out == [{"run_id": "u"}]
    assert any("walk_value" in str(q) for q, _ in plpy.executed) is walks


def test_deep_or_long_filters_are_refused_with_54001_not_a_recursion_error():
    deep = "(" * 5000 + "metrics.rmse < 1" + ")" * 5000
    with pytest.raises(IndbRuntimeError, match="nests parentheses more than 64 deep") as e:
        build(deep)
    assert e.value.sqlstate == "54001" and e.value.hint
    ok = "(" * 60 + "metrics.rmse < 1" + ")" * 60
    assert build(ok)[1] == [("rmse", "text"), (1.0, "float8"), (100, "int4")]
    with pytest.raises(IndbRuntimeError, match="characters long") as e:
        build("metrics.rmse < 1 and " * 10000 + "metrics.rmse < 1")
    assert e.value.sqlstate == "54001"
