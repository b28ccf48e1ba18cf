"""Point-in-time correctness of features.get_historical: hand-made cases with known answers, then
hypothesis property tests against a brute-force reference."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta

import psycopg
import psycopg.sql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(h: float) -> datetime:
    return T0 + timedelta(hours=h)


def q(conn, sql, params=None):
    return conn.execute(sql, params).fetchall()


def typed_historical(conn, entity_sql, feats, ttl_override=None, cutoff=False):
    """The typed path: features.get_historical_cursor, fetched in one transaction, as dicts of Python values."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "select features.get_historical_cursor(%s, %s, %s, created_cutoff => %s, cursor_name => 'h')",
            [entity_sql, feats, ttl_override, cutoff],
        )
        cur.execute("fetch all from h")
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def historical(conn, entity_sql, feats, ttl_override=None, method=None, cutoff=False):
    """get_historical rows (jsonb); method forces the join strategy (lateral index probes or sort-merge). The typed
    cursor gives the same rows, column for column (timestamps as datetime, the rest equal to the jsonb values)."""
    if method:
        conn.execute("select set_config('indb.features_pit_method', %s, false)", [method])
    try:
        rows = q(
            conn,
            "select * from features.get_historical(%s, %s, %s, created_cutoff => %s)",
            [entity_sql, feats, ttl_override, cutoff],
        )
        typed = typed_historical(conn, entity_sql, feats, ttl_override, cutoff)
    finally:
        if method:
            conn.execute("reset indb.features_pit_method")
    rows = [r[0] for r in rows]
    assert [sorted(r) for r in typed] == [sorted(r) for r in rows]  # same columns (jsonb keeps no column order)
    for t, j in zip(typed, rows):
        assert {k: v for k, v in t.items() if not isinstance(v, datetime)} == {
            k: v for k, v in j.items() if not isinstance(t[k], datetime)
        }
    return rows


METHODS = ["asof", "lateral", "lvcf", "merge"]


@pytest.fixture(scope="module")
def pit(sconn):
    """acct entity; view pa (no ttl) and pb (ttl 1 hour); composite-key view pc."""
    c = sconn
    c.execute("create table pit_a_src (acct_id int, ts timestamptz, v float8)")
    c.execute("create table pit_b_src (acct_id int, ts timestamptz, w float8)")
    c.execute("create table pit_c_src (user_id bigint, item text, ts timestamptz, score int)")
    c.execute("insert into pit_a_src values (1, %s, 1), (1, %s, 2), (2, %s, 20)", [at(10), at(12), at(5)])
    c.execute("insert into pit_b_src values (1, %s, 100)", [at(10)])
    c.execute("insert into pit_c_src values (1, 'x', %s, 5), (1, 'y', %s, 6), (2, 'y', %s, 7)", [at(1), at(1), at(2)])
    c.execute("select features.create_entity('acct', array['acct_id'])")
    c.execute("select features.create_entity('user_item', array['user_id', 'item'])")
    c.execute("""select features.create_feature_view('pa', 'acct', 'pit_a_src', 'ts', '[{"name": "v"}]')""")
    c.execute(
        """select features.create_feature_view('pb', 'acct', 'pit_b_src', 'ts', '[{"name": "w"}]', ttl => '1 hour')"""
    )
    c.execute("""select features.create_feature_view('pc', 'user_item', 'pit_c_src', 'ts', '[{"name": "score"}]')""")
    for v in ("pa", "pb", "pc"):
        c.execute("select * from features.materialize(%s, '2023-12-01', '2024-02-01')", [v])
    # a second write at the same event time as an existing one: the later write wins
    c.execute("select * from features.push('pa', %s)", [json.dumps([{"acct_id": 1, "ts": at(12).isoformat(), "v": 3}])])
    return c


def entity_rows(rows: list[tuple]) -> str:
    vals = ", ".join(f"({k}, '{t.isoformat()}'::timestamptz)" for k, t in rows)
    return f"select * from (values {vals}) e(acct_id, event_timestamp)"


@pytest.mark.parametrize("method", METHODS)
def test_values_before_at_and_after_events(pit, method):
    got = historical(
        pit,
        entity_rows(
            [(1, at(9)), (1, at(10)), (1, at(11.99)), (1, at(12)), (1, at(23)), (2, at(4)), (2, at(6)), (3, at(12))]
        ),
        ["pa:v"],
        method=method,
    )
    assert [r["v"] for r in got] == [None, 1, 1, 3, 3, None, 20, None]


@pytest.mark.parametrize("method", METHODS)
def test_never_a_future_value(pit, method):
    got = historical(pit, entity_rows([(1, at(11))]), ["pa:v"], method=method)
    assert got[0]["v"] == 1  # the 12:00 values exist but lie in the future of 11:00


@pytest.mark.parametrize("method", METHODS)
def test_ttl_window_is_inclusive_and_expires(pit, method):
    got = historical(
        pit, entity_rows([(1, at(10.5)), (1, at(11)), (1, at(11.02)), (1, at(9))]), ["pb:w"], method=method
    )
    assert [r["w"] for r in got] == [100, 100, None, None]
    got = historical(pit, entity_rows([(1, at(11.02)), (1, at(20))]), ["pb:w"], ttl_override="10 hours", method=method)
    assert [r["w"] for r in got] == [100, 100]


@pytest.mark.parametrize("method", METHODS)
def test_multiple_views_with_different_ttls_in_one_request(pit, method):
    got = historical(pit, entity_rows([(1, at(10.5)), (1, at(13))]), ["pa:v", "pb:w"], method=method)
    assert [(r["v"], r["w"]) for r in got] == [(1, 100), (3, None)]
    if method == "asof":  # the two views share the entity rows' key column, which is read and kept once
        pit.execute("set indb.features_pit_method = 'asof'")
        try:
            sql = q(pit, "select features.historical_query(%s, array['pa:v', 'pb:w'])", [entity_rows([(1, at(1))])])
        finally:
            pit.execute("reset indb.features_pit_method")
        assert sql[0][0].count("q.acct_id::int8") == 1 and "'{1,1}'::int[]" in sql[0][0]


def test_late_arriving_event_fills_history_but_not_online(pit):
    pit.execute(
        "select * from features.push('pa', %s)", [json.dumps([{"acct_id": 1, "ts": at(11).isoformat(), "v": 9}])]
    )
    got = historical(pit, entity_rows([(1, at(11.5)), (1, at(12.5))]), ["pa:v"])
    assert [r["v"] for r in got] == [9, 3]
    online = q(pit, "select features.get_online(array['pa:v'], '{\"acct_id\": 1}')")[0][0]
    assert online["v"] == 3 and online["_status"]["v"] == "present"


@pytest.fixture(scope="module")
def late(sconn):
    """view pl: acct 1 has v=1 about 10:00 written at 10:00, v=2 about 11:00 written only at 15:00 (a late
    correction), v=3 about 13:00 written at 13:00; acct 2 has v=20 about 9:00 written at 20:00."""
    c = sconn
    c.execute("create table pit_l_src (acct_id int, ts timestamptz, v float8)")
    c.execute("select features.create_entity('acct', array['acct_id'])")
    c.execute("""select features.create_feature_view('pl', 'acct', 'pit_l_src', 'ts', '[{"name": "v"}]')""")
    rows = [(1, 10, 1, 10), (1, 11, 2, 15), (1, 13, 3, 13), (2, 9, 20, 20)]
    c.execute(
        "select * from features.push('pl', %s, 'offline')",
        [json.dumps([{"acct_id": k, "ts": at(h).isoformat(), "v": v} for k, h, v, _ in rows])],
    )
    rel = c.execute("select offline_table from features.feature_views where name = 'pl'").fetchone()[0]
    for k, h, _, w in rows:  # history: when each value was really written
        c.execute(f"update {rel} set written_at = %s where acct_id = %s and event_ts = %s", [at(w), k, at(h)])
    return c


@pytest.mark.parametrize("method", METHODS)
def test_created_cutoff_keeps_late_writes_out_of_earlier_rows(late, method):
    rows = entity_rows([(1, at(12)), (1, at(14)), (1, at(16)), (2, at(10)), (2, at(21))])
    without = historical(late, rows, ["pl:v"], method=method)
    assert [r["v"] for r in without] == [2, 3, 3, 20, 20]  # event time only: the 15:00 write leaks into 12:00
    got = historical(late, rows, ["pl:v"], method=method, cutoff=True)
    # at 12:00 only v=1 was written; at 14:00 v=3 (13:00) is the latest known; at 16:00 too (event 13:00 > 11:00)
    assert [r["v"] for r in got] == [1, 3, 3, None, 20]
    got = historical(late, rows, ["pl:v"], ttl_override="90 minutes", method=method, cutoff=True)
    assert [r["v"] for r in got] == [None, 3, None, None, None]


def test_created_cutoff_in_a_training_set(late):
    late.execute(
        "select * from features.create_training_set('pit_late_ts', %s, array['pl:v'], created_cutoff => true)",
        [entity_rows([(1, at(12)), (2, at(10))])],
    )
    assert q(late, "select v from pit_late_ts order by acct_id") == [(1.0,), (None,)]


def test_asof_keeps_text_keys_large_values_and_null_keys_like_the_index_probe(pit):
    """The in-memory join copies what it keeps: a text-keyed view whose text feature is stored out of line
    (TOAST, 100,000 characters) gives the same rows as the index probe, and NULL keys or times match nothing."""
    pit.execute("create table pit_t_src (code text, ts timestamptz, note text, n int)")
    big = "".join(secrets.token_hex(8) for _ in range(6250))  # 100,000 characters, incompressible
    pit.execute(
        "insert into pit_t_src values ('a', %s, %s, 1), ('a', %s, 'short', 2), ('b', %s, 'b1', 3), ('', %s, 'empty', 4)",
        [at(1), big, at(5), at(2), at(1)],
    )
    pit.execute("select features.create_entity('code', array['code'])")
    pit.execute(
        """select features.create_feature_view('pt', 'code', 'pit_t_src', 'ts', '[{"name": "note"}, {"name": "n"}]')"""
    )
    pit.execute("select * from features.materialize('pt', '2023-12-01', '2024-02-01')")
    rows = [("a", 0.5), ("a", 2), ("a", 6), ("b", 3), (None, 3), ("a", None), ("", 3), ("c", 3)]
    vals = ", ".join(
        f"({'null' if k is None else repr(k)}, {'null' if h is None else repr(at(h).isoformat())}::timestamptz)"
        for k, h in rows
    )
    ent = f"select * from (values {vals}) e(code, event_timestamp)"
    got = {m: historical(pit, ent, ["pt:note", "pt:n"], method=m) for m in ("asof", "lateral")}
    assert got["asof"] == got["lateral"]
    assert [(r["note"], r["n"]) for r in got["asof"]] == [
        (None, None),
        (big, 1),
        ("short", 2),
        ("b1", 3),
        (None, None),
        (None, None),
        ("empty", 4),
        (None, None),
    ]


def test_auto_mixes_asof_and_one_sort_by_the_memory_limit(pit):
    """With indb.features_pit_asof_mb = 1, a view of 20,000 rows (~1.6 MB by the estimate) is joined by one sort
    and a view of 3 rows in memory, in the same request: the rows equal the index probe's."""
    pit.execute(
        "create table pit_big_src as select g %% 50 + 1 as acct_id, %s + g * interval '1 second' as ts, g::float8 as b "
        "from generate_series(1, 20000) g",
        [T0],
    )
    pit.execute("create table pit_small_src as select * from pit_a_src")
    pit.execute("""select features.create_feature_view('pbig', 'acct', 'pit_big_src', 'ts', '[{"name": "b"}]')""")
    pit.execute("""select features.create_feature_view('psmall', 'acct', 'pit_small_src', 'ts', '[{"name": "v"}]')""")
    for v in ("pbig", "psmall"):
        pit.execute("select * from features.materialize(%s, '2023-12-01', '2024-02-01')", [v])
        pit.execute(f"analyze {q(pit, 'select offline_table from features.feature_views where name = %s', [v])[0][0]}")
    ent = (
        "select g % 60 as acct_id, timestamptz '2024-01-01' + g * interval '20 seconds' as event_timestamp "
        "from generate_series(1, 5000) g"
    )
    pit.execute("set indb.features_pit_asof_mb = 1")
    try:
        sql = q(pit, "select features.historical_query(%s, array['pbig:b', 'psmall:v'])", [ent])[0][0]
        assert "features._pit_asof(" in sql and "_indb_best" in sql
        got = historical(pit, ent, ["pbig:b", "psmall:v"])
    finally:
        pit.execute("reset indb.features_pit_asof_mb")
    assert got == historical(pit, ent, ["pbig:b", "psmall:v"], method="lateral")
    assert sum(r["b"] is not None for r in got) > 4000 and sum(r["v"] is not None for r in got) > 100


def test_asof_stops_at_its_memory_limit_and_on_cancel_without_harm(pit):
    """More rows than the statistics promised: past twice indb.features_pit_asof_mb the join stops with 54000 and
    advice, and a statement_timeout stops it while it reads (57014); the connection goes on, and the same request
    then runs with the default limit."""
    ent = (
        "select g % 3 as acct_id, timestamptz '2024-01-01' + g * interval '1 second' as event_timestamp "
        "from generate_series(1, {}) g"
    )
    pit.execute("set indb.features_pit_method = 'asof'")
    try:
        pit.execute("set indb.features_pit_asof_mb = 1")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="needs more than 2 MB") as ei:
            q(pit, "select count(*) from features.get_historical(%s, array['pa:v'])", [ent.format(300_000)])
        assert "features_pit_method = 'lvcf'" in ei.value.diag.message_hint
        pit.execute("reset indb.features_pit_asof_mb")
        pit.execute("set statement_timeout = '100ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            q(pit, "select count(*) from features.get_historical(%s, array['pa:v'])", [ent.format(20_000_000)])
        pit.execute("reset statement_timeout")
        count = (
            "select count(*), count(x->>'v'), sum((x->>'v')::float8) from features.get_historical(%s, array['pa:v']) x"
        )
        got = q(pit, count, [ent.format(300_000)])
        pit.execute("set indb.features_pit_method = 'lvcf'")
        assert got == q(pit, count, [ent.format(300_000)]) and got[0][1] > 100_000
    finally:
        pit.execute("reset statement_timeout")
        pit.execute("reset indb.features_pit_asof_mb")
        pit.execute("reset indb.features_pit_method")


def test_asof_function_refuses_what_does_not_fit_its_column_list(pit):
    """features._pit_asof checks every column's type against its column definition list before using a value:
    a caller's mismatched list is a 42804 naming the column, never a misread value; bad arguments are 22023/22004."""
    ent = "select 1::int as k, now() as t, 1::bigint as k8"
    view = "select acct_id::int8, event_ts, written_at, v from features.fv_{}_offline".format(
        q(pit, "select id from features.feature_views where name = 'pa'")[0][0]
    )
    call = (
        "select * from features._pit_asof(%s, 1, array[%s], array[1], array[1], array[null::interval], false) as e({})"
    )
    assert q(pit, call.format("k int, v float8"), [ent, view]) == [(1, 3.0)]
    for cols, args, state, msg in (
        ("k text, v float8", [ent, view], "42804", r"entity column \(column 1\) has type integer, expected text"),
        ("k int, v text", [ent, view], "42804", r"feature \(column 4\) has type double precision, expected text"),
        ("k int, v float8", [ent, view.replace("acct_id::int8", "acct_id")], "42804", "offline key"),
        ("k int, v float8", [ent.replace("1::bigint", "1::int"), view], "42804", "expected bigint or text"),
        ("k int", [ent, view], "42804", "do not fit"),
        ("k int, v float8, w int", [ent, view], "42804", "the views return 1 features"),
    ):
        with pytest.raises(psycopg.Error, match=msg) as ei:
            q(pit, call.format(cols), args)
        assert ei.value.sqlstate == state, (cols, ei.value)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="do not fit together"):
        q(
            pit,
            "select * from features._pit_asof(%s, 1, array[%s], array[1, 2], array[1], array[null::interval], false) as e(k int, v float8)",
            [ent, view],
        )
    for pos, msg in (("array[1, 1]", "2 key places for 1 keys"), ("array[2]", "key place 1 is outside 1..1")):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=msg):
            q(
                pit,
                f"select * from features._pit_asof(%s, 1, array[%s], array[1], {pos}, array[null::interval], false) as e(k int, v float8)",
                [ent, view],
            )
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        q(
            pit,
            "select * from features._pit_asof(null, 1, array[%s], array[1], array[1], array[null::interval], false) as e(k int, v float8)",
            [view],
        )


def test_typed_cursor_columns_and_errors(pit):
    rows = typed_historical(pit, entity_rows([(1, at(10)), (2, at(6))]), ["pa:v"])
    assert rows == [
        {"acct_id": 1, "event_timestamp": at(10), "v": 1.0},
        {"acct_id": 2, "event_timestamp": at(6), "v": 20.0},
    ]
    assert list(rows[0]) == ["acct_id", "event_timestamp", "v"]  # entity columns in order, then the features
    with pytest.raises(psycopg.errors.DuplicateCursor, match="already open"), pit.transaction():
        for _ in range(2):
            pit.execute(
                "select features.get_historical_cursor(%s, array['pa:v'], cursor_name => 'same')",
                [entity_rows([(1, at(10))])],
            )
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="cursor name"), pit.transaction():
        pit.execute("select features.get_historical_cursor(%s, array['pa:v'], cursor_name => '')", [entity_rows([])])
    # the cursor name is a name, not SQL: quotes and semicolons stay in it
    with pit.transaction():
        name = pit.execute(
            "select features.get_historical_cursor(%s, array['pa:v'], cursor_name => 'x\"; drop table pit_a_src; --')",
            [entity_rows([(1, at(10))])],
        ).fetchone()[0]
        assert pit.execute(psycopg.sql.SQL("fetch all from {}").format(psycopg.sql.Identifier(name))).fetchall()
    assert q(pit, "select count(*) from pit_a_src")[0][0] == 3


@pytest.mark.parametrize("method", METHODS)
def test_composite_entity_keys(pit, method):
    sql = (
        "select * from (values (1::bigint, 'x', %L::timestamptz), (1, 'y', %L), (2, 'x', %L), (2, 'y', %L), (1, 'x', %L)) "
        "e(user_id, item, event_timestamp)"
    )
    sql = sql.replace("%L", "'{}'").format(
        at(3).isoformat(), at(3).isoformat(), at(3).isoformat(), at(3).isoformat(), at(0.5).isoformat()
    )
    got = historical(pit, sql, ["pc:score"], method=method)
    assert [r["score"] for r in got] == [5, 6, None, 7, None]


@pytest.mark.parametrize("method", METHODS)
def test_entity_rows_keep_their_columns_and_order(pit, method):
    sql = (
        "select acct_id, event_timestamp, 'lbl' || acct_id as label from ("
        + entity_rows([(2, at(6)), (1, at(10))])
        + ") s"
    )
    got = historical(pit, sql, ["pa:v"], method=method)
    assert [(r["acct_id"], r["label"], r["v"]) for r in got] == [(2, "lbl2", 20), (1, "lbl1", 1)]


def test_plan_uses_the_offline_index_or_a_bounded_sort(pit):
    for method, expect in (
        ("lateral", ("Index", "Limit")),
        ("lvcf", ("WindowAgg",)),
        ("merge", ("WindowAgg", "Sort")),
        ("asof", ("Function Scan on _pit_asof",)),  # no sort and no window: C reads and sorts in memory
    ):
        pit.execute("select set_config('indb.features_pit_method', %s, false)", [method])
        sql = q(pit, "select features.historical_query(%s, array['pa:v'])", [entity_rows([(1, at(10))])])[0][0]
        plan = "\n".join(r[0] for r in q(pit, "explain " + sql))
        assert all(x in plan for x in expect), (method, plan)
        if method in ("lvcf", "merge"):
            # lvcf: one window pass per view (plus the entity rows' numbering); merge: two
            assert plan.count("WindowAgg") == {"lvcf": 2, "merge": 3}[method], (method, plan)
    pit.execute("reset indb.features_pit_method")


def test_auto_strategy_follows_the_sizes_and_a_bad_strategy_is_refused(pit):
    """auto: one index probe per entity row when entity rows are few next to the view's rows; when they are
    comparable, the in-memory asof join if the view fits indb.features_pit_asof_mb, else one sort (lvcf); an
    unknown strategy or a bad memory setting is a 22023 naming the choices."""
    pit.execute(
        "create table pit_auto_src as select 1 as acct_id, %s + g * interval '1 minute' as ts, g::float8 as a "
        "from generate_series(1, 120) g",
        [T0],
    )
    pit.execute("""select features.create_feature_view('pauto', 'acct', 'pit_auto_src', 'ts', '[{"name": "a"}]')""")
    pit.execute("select * from features.materialize('pauto', '2023-12-01', '2024-02-01')")
    rel = q(pit, "select offline_table from features.feature_views where name = 'pauto'")[0][0]
    pit.execute(f"analyze {rel}")  # the estimate auto reads: 120 rows
    few = q(pit, "select features.historical_query(%s, array['pauto:a'])", [entity_rows([(1, at(10))])])[0][0]
    assert "left join lateral" in few and "_indb_best" not in few
    # one request, two strategies: pauto's 120 rows are many next to one entity row, pa's 3 are not (a store
    # never analyzed is read by index probes, whatever its size)
    one_row = entity_rows([(1, at(12))])
    sql = q(pit, "select features.historical_query(%s, array['pa:v'])", [entity_rows([(1, at(h)) for h in range(9)])])
    assert "left join lateral" in sql[0][0]
    pa_rel = q(pit, "select offline_table from features.feature_views where name = 'pa'")[0][0]
    pit.execute(f"analyze {pa_rel}")
    mixed = q(pit, "select features.historical_query(%s, array['pauto:a', 'pa:v'])", [one_row])[0][0]
    assert "features._pit_asof(" in mixed and "left join lateral" in mixed
    got = historical(pit, one_row, ["pauto:a", "pa:v"])
    assert got == historical(pit, one_row, ["pauto:a", "pa:v"], method="lateral")
    assert (got[0]["a"], got[0]["v"]) == (120.0, 3.0)
    many = entity_rows([(1, at(h / 10)) for h in range(100)])
    sql = q(pit, "select features.historical_query(%s, array['pauto:a'])", [many])[0][0]
    assert "features._pit_asof(" in sql and "_indb_best" not in sql
    pit.execute("set indb.features_pit_asof_mb = 0")  # the view does not fit: one sort instead
    try:
        sql = q(pit, "select features.historical_query(%s, array['pauto:a'])", [many])[0][0]
        assert "_indb_best" in sql and "_pit_asof" not in sql
        pit.execute("set indb.features_pit_asof_mb = 'lots'")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="features_pit_asof_mb must be a number"):
            q(pit, "select features.historical_query(%s, array['pauto:a'])", [many])
    finally:
        pit.execute("reset indb.features_pit_asof_mb")
    pit.execute("set indb.features_pit_method = 'fastest'")
    try:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="auto, asof, lateral, lvcf or merge"):
            q(pit, "select features.historical_query(%s, array['pauto:a'])", [entity_rows([(1, at(10))])])
    finally:
        pit.execute("reset indb.features_pit_method")


# -- property tests against a brute-force reference --------------------------------------------------------

feature_rows = st.dictionaries(
    keys=st.tuples(st.integers(1, 4), st.integers(0, 200)),  # (key, minute): unique per key and time
    values=st.integers(-50, 50),
    max_size=40,
)
entity_rows_st = st.lists(st.tuples(st.integers(1, 5), st.integers(-10, 230)), min_size=1, max_size=25)
ttls = st.one_of(st.none(), st.integers(1, 120))


def brute_force(frows: dict, erows: list, ttl_min, delays: dict | None = None):
    """The reference: per entity row the value with the latest event time at or before it (within ttl); with
    delays (written at event time + delay minutes), only values written at or before the entity row's time."""
    out = []
    for k, m in erows:
        best = None
        for (fk, fm), val in frows.items():
            if delays is not None and fm + delays.get((fk, fm), 0) > m:
                continue
            if fk == k and fm <= m and (ttl_min is None or fm >= m - ttl_min) and (best is None or fm > best[0]):
                best = (fm, val)
        out.append(None if best is None else best[1])
    return out


@settings(max_examples=45, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    frows=feature_rows,
    erows=entity_rows_st,
    ttl_min=ttls,
    method=st.sampled_from(METHODS),
    delays=st.one_of(st.none(), st.lists(st.integers(0, 120), min_size=40, max_size=40)),
)
def test_matches_brute_force(sconn, frows, erows, ttl_min, method, delays):
    """Every strategy, with and without the created-timestamp cutoff (delays: each value written that many
    minutes after its event time)."""
    name = "prop_" + secrets.token_hex(4)
    src = name + "_src"
    c = sconn
    c.execute("select features.create_entity('prop_key', array['k'])")
    c.execute(f"create table {src} (k int, ts timestamptz, x int)")
    with c.cursor() as cur:
        cur.executemany(
            f"insert into {src} values (%s, %s, %s)", [(k, T0 + timedelta(minutes=m), v) for (k, m), v in frows.items()]
        )
    ttl = None if ttl_min is None else f"{ttl_min} minutes"
    c.execute(
        "select features.create_feature_view(%s, 'prop_key', %s, 'ts', '[{\"name\": \"x\"}]', ttl => %s::interval)",
        [name, src, ttl],
    )
    c.execute("select * from features.materialize(%s, '2023-12-31', '2024-01-02', statistics => false)", [name])
    delay = None if delays is None else {km: d for km, d in zip(sorted(frows), delays)}
    if delay:
        rel = c.execute("select offline_table from features.feature_views where name = %s", [name]).fetchone()[0]
        with c.cursor() as cur:
            cur.executemany(
                f"update {rel} set written_at = event_ts + %s * interval '1 minute' where k = %s and event_ts = %s",
                [(d, k, T0 + timedelta(minutes=m)) for (k, m), d in delay.items()],
            )
    vals = ", ".join(
        f"({i}, {k}, '{(T0 + timedelta(minutes=m)).isoformat()}'::timestamptz)" for i, (k, m) in enumerate(erows)
    )
    got = historical(
        c,
        f"select * from (values {vals}) e(i, k, event_timestamp)",
        [f"{name}:x"],
        method=method,
        cutoff=delay is not None,
    )
    assert [r["i"] for r in got] == list(range(len(erows)))  # entity order kept
    got = [r["x"] for r in got]
    assert got == brute_force(frows, erows, ttl_min, delay)
    c.execute(f"drop table {src}")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    frows=feature_rows,
    pushes=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 200), st.integers(-50, 50)), max_size=15),
)
def test_online_equals_latest_offline_after_out_of_order_pushes(sconn, frows, pushes):
    """Online value = the offline value at the latest event time, whatever order events arrive in."""
    name = "propo_" + secrets.token_hex(4)
    c = sconn
    c.execute("select features.create_entity('prop_key', array['k'])")
    c.execute(f"create table {name}_src (k int, ts timestamptz, x int)")
    c.execute(
        "select features.create_feature_view(%s, 'prop_key', %s, 'ts', '[{\"name\": \"x\"}]')", [name, name + "_src"]
    )
    truth: dict = {}
    rows = [{"k": k, "ts": (T0 + timedelta(minutes=m)).isoformat(), "x": v} for (k, m), v in frows.items()]
    for (k, m), v in frows.items():
        truth[(k, m)] = v
    if rows:
        c.execute("select * from features.push(%s, %s)", [name, json.dumps(rows)])
    for k, m, v in pushes:  # one by one, in random time order; a same-time write replaces the value
        c.execute(
            "select * from features.push(%s, %s)",
            [name, json.dumps([{"k": k, "ts": (T0 + timedelta(minutes=m)).isoformat(), "x": v}])],
        )
        truth[(k, m)] = v
    for k in range(1, 5):
        online = c.execute(
            "select features.get_online(array[%s], jsonb_build_object('k', %s))", [f"{name}:x", k]
        ).fetchone()[0]
        latest = max((m for (kk, m) in truth if kk == k), default=None)
        assert online["x"] == (None if latest is None else truth[(k, latest)])
        hist = historical(c, f"select {k} as k, '2024-01-02'::timestamptz as event_timestamp", [f"{name}:x"])
        assert hist[0]["x"] == online["x"]
