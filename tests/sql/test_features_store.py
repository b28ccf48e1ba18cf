"""Feature store behaviour against a real database: versioning, materialization with statistics and
expectations, push, online serving with ttl, on-demand features, drift, freshness, skew, training sets,
and clear errors for bad input."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from helpers import explain_everything
from psycopg.rows import dict_row

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def row(conn, sql, params=None) -> dict:
    """The one row of a function that returns a typed row, as a dict."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(sql, params).fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def err(conn, sql, params=None) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql, params)
    return ei.value


@pytest.fixture(scope="module")
def shop(sconn):
    """A small 'orders' source: 3 customers over 3 days, and a customer_stats view (ttl 2 days)."""
    c = sconn
    c.execute("create table fs_orders (customer_id int, ts timestamptz, amount numeric, country text)")
    rows = []
    for i in range(60):
        rows.append((i % 3 + 1, T0 + timedelta(hours=i), 10 + i, ["DE", "FR", "IT"][i % 3]))
    with c.cursor() as cur:
        cur.executemany("insert into fs_orders values (%s, %s, %s, %s)", rows)
    c.execute("select features.create_entity('customer', array['customer_id'], 'a shop customer')")
    feats = [
        {"name": "amount", "type": "float8", "expect": {"not_null": True, "min": 0}},
        {"name": "amount_x2", "type": "float8", "expr": "amount * 2"},
        {"name": "country", "expect": {"in": ["DE", "FR", "IT"]}},
    ]
    assert (
        one(
            c,
            "select features.create_feature_view('customer_stats', 'customer', 'fs_orders', 'ts', %s, ttl => '2 days', owner => 'shop-team')",
            [json.dumps(feats)],
        )
        == "customer_stats@1"
    )
    return c


def test_materialize_writes_offline_online_and_statistics(shop):
    r = row(shop, "select * from features.materialize('customer_stats', %s, %s)", [T0, T0 + timedelta(days=3)])
    assert r["rows_read"] == 60 and r["rows_written"] == 60 and r["online_updated"] == 3 and r["rows_quarantined"] == 0
    run = shop.execute(
        "select status, rows_written from features.materialization_runs where id = %s", [r["run_id"]]
    ).fetchone()
    assert run == ("succeeded", 60)
    stats = dict(
        shop.execute("select feature, stats from features.statistics where run_id = %s", [r["run_id"]]).fetchall()
    )
    a = stats["amount"]
    assert a["count"] == 60 and a["nulls"] == 0 and a["min"] == 10 and a["max"] == 69
    assert abs(a["mean"] - 39.5) < 1e-9 and abs(a["quantiles"]["p50"] - 39.5) < 1e-9
    assert sum(a["histogram"]["counts"]) == 60 and len(a["histogram"]["edges"]) == 11
    assert stats["country"]["kind"] == "categorical" and stats["country"]["distinct"] == 3


@pytest.mark.parametrize(
    "values, expect",
    [
        # NaN and infinities are float8 values a source may hold: counted apart, the rest described
        ([1.5, 2.5, "NaN", "Infinity", "-Infinity", None], {"non_finite": 3, "nulls": 1, "min": 1.5, "max": 2.5}),
        # squares above float8's range: described in numeric
        ([1e200, -1e200, 0.0], {"non_finite": 0, "min": -1e200, "max": 1e200, "mean": 0}),
        # one value (min = max): every row in the first bin
        ([100000.0, 100000.0], {"non_finite": 0, "min": 100000, "max": 100000, "std": 0}),
    ],
    ids=["nan-infinity", "1e200", "constant-100000"],
)
def test_statistics_never_fail_a_materialization(sconn, request, values, expect):
    """A float8 feature holding NaN or an infinity, values whose squares overflow float8, or one large constant
    made every materialization of its view fail in its statistics ('lower and upper bounds must be finite',
    'value out of range: overflow', 'lower bound cannot equal upper bound'): nothing reached the stores. Now the
    rows are stored and served, and the statistics describe the finite values and count the others."""
    c = sconn
    name = "st_" + request.node.callspec.id.replace("-", "_")
    c.execute(f"create table {name}_src (k int, ts timestamptz, a float8)")
    with c.cursor().copy(f"copy {name}_src from stdin") as cp:
        for i, v in enumerate(values):
            cp.write_row((i, datetime.now(UTC), v))
    c.execute("select features.create_entity(%s, array['k'])", [name + "_e"])
    c.execute(f"""select features.create_feature_view('{name}', '{name}_e', '{name}_src', 'ts', '[{{"name": "a"}}]')""")
    r = row(c, "select * from features.materialize(%s, now() - interval '1 day', now() + interval '1 hour')", [name])
    assert r["rows_written"] == len(values) and r["rows_quarantined"] == 0
    st = one(c, "select stats from features.statistics where run_id = %s and feature = 'a'", [r["run_id"]])
    assert st["count"] == len(values)
    for key, want in expect.items():
        assert st[key] == pytest.approx(want), (key, st)
    h = st["histogram"]
    assert len(h["edges"]) == 11 and sum(h["counts"]) == len(values) - st["nulls"] - st["non_finite"]
    assert h["edges"][0] == pytest.approx(st["min"]) and h["edges"][-1] == pytest.approx(st["max"])
    assert st["quantiles"]["p01"] >= st["min"] and st["quantiles"]["p99"] <= st["max"]
    got = one(c, "select features.get_online(array[%s], '{\"k\": 0}')", [name + ":a"])
    assert got["_status"]["a"] == "present"


def test_a_wrong_year_makes_one_partition_and_an_infinite_time_is_quarantined(sconn):
    """Rows in 1900 and 9999 beside today's: the offline store gets a partition for each year that holds rows (a
    partition for every year between them, and an insert for each, ended in "out of shared memory"). A row at
    -infinity is quarantined like a row without a time, and the others are written."""
    c = sconn
    c.execute("create table wy_src (k int, ts timestamptz, a float8)")
    c.execute(
        "insert into wy_src values (1, now(), 1), (2, '1900-01-01', 2), (3, '9999-12-31', 3), (4, '-infinity', 4)"
    )
    c.execute("select features.create_entity('wy_e', array['k'])")
    c.execute("""select features.create_feature_view('wy', 'wy_e', 'wy_src', 'ts', '[{"name": "a"}]')""")
    r = row(
        c, "select rows_read, rows_written, rows_quarantined from features.materialize('wy', '-infinity', 'infinity')"
    )
    assert (r["rows_read"], r["rows_written"], r["rows_quarantined"]) == (4, 3, 1)
    parts = one(
        c,
        "select count(*) from pg_inherits where inhparent = "
        "(select offline_table::regclass from features.feature_views where name = 'wy')",
    )
    assert parts == 3
    q = c.execute(
        "select entity_key, failures from features.quarantine where view_id = "
        "(select id from features.feature_views where name = 'wy')"
    ).fetchall()
    assert q == [("[4]", ["event_ts: infinite timestamp"])]
    assert one(c, """select features.get_online(array['wy:a'], '{"k": 3}')""")["a"] == 3


def test_more_than_1000_new_partitions_in_one_call_is_a_clear_error(sconn):
    """Rows on 1,001 days of a view partitioned by day: refused before any partition is made (54000, with the
    count and what to do), not "out of shared memory" after thousands."""
    c = sconn
    c.execute("create table dp_src (k int, ts timestamptz, a float8)")
    c.execute(
        "insert into dp_src select g, '2020-01-01'::timestamptz + g * interval '1 day', g from generate_series(1, 1001) g"
    )
    c.execute("select features.create_entity('dp_e', array['k'])")
    c.execute(
        """select features.create_feature_view('dp', 'dp_e', 'dp_src', 'ts', '[{"name": "a"}]', partition_by => 'day')"""
    )
    with pytest.raises(psycopg.Error) as e:
        c.execute("select * from features.materialize('dp', '2019-01-01', '2030-01-01')")
    assert e.value.sqlstate == "54000" and "1001 day periods" in str(e.value)
    assert "smaller ranges" in e.value.diag.message_hint
    parts = one(
        c,
        "select count(*) from pg_inherits where inhparent = "
        "(select offline_table::regclass from features.feature_views where name = 'dp')",
    )
    assert parts == 0


def test_rematerializing_is_idempotent(shop):
    r = row(shop, "select * from features.materialize('customer_stats', %s, %s)", [T0, T0 + timedelta(days=3)])
    assert r["rows_written"] == 60
    v = one(shop, "select offline_table from features.feature_views where name = 'customer_stats'")
    assert one(shop, f"select count(*) from {v}") == 60


def test_offline_store_is_partitioned_by_event_time(shop):
    n = one(
        shop,
        """select count(*) from pg_inherits i join pg_class c on c.oid = i.inhparent
                      join features.feature_views v on v.offline_table = 'features.' || c.relname where v.name = 'customer_stats'""",
    )
    assert n >= 1
    assert (
        one(
            shop,
            """select c.relkind from pg_class c join features.feature_views v on v.offline_table = 'features.' || c.relname
                         where v.name = 'customer_stats'""",
        )
        == "p"
    )


def test_online_values_equal_offline_values_for_the_same_entity_and_time(shop):
    online = one(
        shop,
        "select features.get_online(array['customer_stats:amount', 'customer_stats:country'], '{\"customer_id\": 2}')",
    )
    ts = online["_event_ts"]["customer_stats@1"]
    hist = one(
        shop,
        "select features.get_historical(%s, array['customer_stats:amount', 'customer_stats:country'], '100 years')",
        [f"select 2 as customer_id, '{ts}'::timestamptz as event_timestamp"],
    )
    # online is subject to the 2-day ttl against now(); compare the values themselves through ttl_override
    assert online["_status"]["amount"] == "outside_ttl" and online["amount"] is None
    assert hist["amount"] == 68 and hist["country"] == "FR"
    assert one(shop, "select mismatches from features.check_skew('customer_stats', 10)") == 0


def test_online_ttl_flags_instead_of_serving_stale(shop):
    shop.execute(
        "select features.push('customer_stats', %s)",
        [
            json.dumps(
                [
                    {
                        "customer_id": 3,
                        "ts": datetime.now(UTC).isoformat(),
                        "amount": 5,
                        "amount_x2": 10,
                        "country": "IT",
                    }
                ]
            )
        ],
    )
    r = one(
        shop,
        "select features.get_online(array['customer_stats:amount', 'customer_stats:country'], '{\"customer_id\": 3}')",
    )
    assert r["amount"] == 5 and r["_status"] == {"amount": "present", "country": "present"}
    r = one(shop, "select features.get_online(array['customer_stats:amount'], '{\"customer_id\": 1}')")
    assert r["amount"] is None and r["_status"]["amount"] == "outside_ttl"
    r = one(shop, "select features.get_online(array['customer_stats:amount'], '{\"customer_id\": 999}')")
    assert r["amount"] is None and r["_status"]["amount"] == "not_found"
    fresh = shop.execute(
        "select entities, ttl_breaches, last_status from features.freshness where view = 'customer_stats@1'"
    ).fetchone()
    assert fresh == (3, 2, "succeeded")


def test_get_online_batch_keeps_input_order(shop):
    rows = [
        r[0]
        for r in shop.execute(
            'select features.get_online_batch(array[\'customer_stats:amount\'], \'[{"customer_id": 3}, {"customer_id": 999}, {"customer_id": "3"}]\')'
        )
    ]
    assert [r["customer_id"] for r in rows] == [3, 999, "3"]
    assert [r["_status"]["amount"] for r in rows] == ["present", "not_found", "present"]
    assert rows[0]["amount"] == rows[2]["amount"] == 5


def test_expectations_quarantine_rows_instead_of_dropping_them(shop):
    r = row(
        shop,
        "select * from features.push('customer_stats', %s)",
        [
            json.dumps(
                [
                    {
                        "customer_id": 1,
                        "ts": (T0 + timedelta(days=5)).isoformat(),
                        "amount": -5,
                        "amount_x2": -10,
                        "country": "DE",
                    },
                    {
                        "customer_id": 1,
                        "ts": (T0 + timedelta(days=5, hours=1)).isoformat(),
                        "amount": None,
                        "amount_x2": None,
                        "country": "XX",
                    },
                    {
                        "customer_id": 2,
                        "ts": (T0 + timedelta(days=5)).isoformat(),
                        "amount": 1,
                        "amount_x2": 2,
                        "country": "DE",
                    },
                ]
            )
        ],
    )
    assert r["rows_quarantined"] == 2 and r["rows_written"] == 1
    q = shop.execute(
        """select row->>'country', failures from features.quarantine where run_id = %s order by id""", [r["run_id"]]
    ).fetchall()
    assert q[0] == ("DE", ["amount: min 0"])
    assert q[1][0] == "XX" and set(q[1][1]) == {"amount: not_null", 'country: in ["DE", "FR", "IT"]'}


def test_versions_are_immutable_and_additive_changes_make_a_new_version(shop):
    e = err(shop, "update features.feature_views set ttl = '1 day' where name = 'customer_stats'")
    assert e.sqlstate == "55000" and "immutable" in str(e)
    feats = [
        {"name": "amount", "type": "float8", "expect": {"not_null": True, "min": 0}},
        {"name": "amount_x2", "type": "float8", "expr": "amount * 2"},
        {"name": "country", "expect": {"in": ["DE", "FR", "IT"]}},
        {"name": "amount_x3", "type": "float8", "expr": "amount * 3"},
    ]
    assert (
        one(
            shop,
            "select features.create_feature_view('customer_stats', 'customer', 'fs_orders', 'ts', %s, ttl => '2 days')",
            [json.dumps(feats)],
        )
        == "customer_stats@2"
    )
    # same definition again: no new version
    assert (
        one(
            shop,
            "select features.create_feature_view('customer_stats', 'customer', 'fs_orders', 'ts', %s, ttl => '2 days')",
            [json.dumps(feats)],
        )
        == "customer_stats@2"
    )
    e = err(
        shop,
        "select features.create_feature_view('customer_stats', 'customer', 'fs_orders', 'ts', %s, ttl => '2 days')",
        [json.dumps(feats[:1])],
    )
    assert e.sqlstate == "22023" and "breaking" in str(e) and "amount_x2" in e.diag.message_detail
    assert (
        one(
            shop,
            "select features.create_feature_view('customer_stats', 'customer', 'fs_orders', 'ts', %s, ttl => '2 days', breaking => true)",
            [json.dumps(feats[:1])],
        )
        == "customer_stats@3"
    )
    # name alone = latest; old versions stay readable
    e = err(shop, "select features.get_online(array['customer_stats:country'], '{\"customer_id\": 1}')")
    assert e.sqlstate == "42704" and "customer_stats@3" in str(e)
    r = one(shop, "select features.get_online(array['customer_stats@1:country'], '{\"customer_id\": 3}')")
    assert r["country"] == "IT"


def test_materialize_incremental_continues_where_the_last_run_ended(shop):
    shop.execute("create table fs_clicks (customer_id int, ts timestamptz, n int)")
    shop.execute("insert into fs_clicks values (1, now() - interval '2 hours', 1), (2, now() - interval '1 hour', 2)")
    shop.execute("""select features.create_feature_view('clicks', 'customer', 'fs_clicks', 'ts', '[{"name": "n"}]')""")
    assert one(shop, "select rows_written from features.materialize_incremental('clicks')") == 2
    shop.execute("insert into fs_clicks values (1, now() - interval '1 hour', 5), (3, now(), 7)")
    shop.commit() if not shop.autocommit else None
    # the row at now() of this statement's transaction is not < the new end (now()) of the next run: only newer rows
    r = row(shop, "select * from features.materialize_incremental('clicks')")
    assert r["rows_written"] in (1, 2)
    assert (
        one(
            shop,
            "select count(*) from features.materialization_runs r join features.feature_views v on v.id = r.view_id where v.name = 'clicks'",
        )
        == 2
    )


def test_on_demand_feature_is_the_same_online_and_offline(shop):
    one(
        shop,
        """select features.create_on_demand_feature('amount_vs_request', 'request_amount - amount', 'float8',
                 array['customer_stats@1:amount'], '{"request_amount": "float8"}')""",
    )
    online = one(
        shop,
        "select features.get_online(array['amount_vs_request'], '{\"customer_id\": 3}', '{\"request_amount\": 12.5}')",
    )
    assert online["amount_vs_request"] == 7.5
    hist = one(
        shop,
        "select features.get_historical('select 3 as customer_id, now() as event_timestamp, 12.5::float8 as request_amount', array['amount_vs_request'])",
    )
    assert hist["amount_vs_request"] == 7.5
    assert online["_status"]["amount_vs_request"] == "present"
    # its status is that of its inputs: a null value is never reported as present
    for key, status in ((1, "outside_ttl"), (999, "not_found")):
        r = one(
            shop,
            "select features.get_online(array['amount_vs_request'], %s, '{\"request_amount\": 12.5}')",
            [json.dumps({"customer_id": key})],
        )
        assert r["amount_vs_request"] is None and r["_status"]["amount_vs_request"] == status, r
    e = err(shop, "select features.get_online(array['amount_vs_request'], '{\"customer_id\": 3}')")
    assert e.sqlstate == "22023" and "request_amount" in str(e)
    # in a batch, the same answer per entity, and no _event_ts, as in every batch answer (it carried one only
    # when the request held an on-demand feature)
    batch = [
        r[0]
        for r in shop.execute(
            "select features.get_online_batch(array['amount_vs_request', 'customer_stats@1:amount'], "
            """'[{"customer_id": 3}, {"customer_id": 999}]', '{"request_amount": 12.5}')"""
        )
    ]
    plain = [
        r[0]
        for r in shop.execute(
            "select features.get_online_batch(array['customer_stats@1:amount'], "
            """'[{"customer_id": 3}, {"customer_id": 999}]')"""
        )
    ]
    assert batch[0]["amount_vs_request"] == 7.5 and batch[1]["_status"]["amount_vs_request"] == "not_found"
    assert all("_event_ts" not in b for b in batch + plain), batch + plain
    e = err(
        shop,
        "select features.create_on_demand_feature('bad_odf', 'nosuchcol + 1', 'float8', array['customer_stats@1:amount'])",
    )
    assert "nosuchcol" in str(e)


def test_create_training_set_registers_a_dataset_with_lineage(shop):
    r = row(
        shop,
        """select * from features.create_training_set('fs_train', 'select customer_id, ts as event_timestamp, amount as label from fs_orders',
                     array['customer_stats@1:amount_x2', 'customer_stats@1:country'], 'label')""",
    )
    assert r["rows"] == 60 and r["relation"] == "fs_train" and r["label_column"] == "label"
    assert r["feature_views"] == ["customer_stats@1"]
    info = row(shop, "select * from features.training_set('fs_train')")
    assert info["dataset_id"] == r["dataset_id"] and info["rows"] == 60 and info["label_column"] == "label"
    assert info["feature_columns"] == ["amount_x2", "country"] and info["columns"][0]["name"] == "customer_id"
    ds = shop.execute(
        "select kind, row_count, materialized::text, schema->>'label' from registry.datasets where id = %s",
        [r["dataset_id"]],
    ).fetchone()
    assert ds == ("training_set", 60, "fs_train", "label")
    edge = shop.execute(
        "select src_kind, dst_kind from registry.lineage_edges where dst_kind = 'training_set' and dst_id = %s",
        [str(r["dataset_id"])],
    ).fetchall()
    assert edge == [("feature_view_version", "training_set")]
    # features at the same event time as the label's row are included (event time <= entity time)
    assert one(shop, "select count(*) from fs_train where amount_x2 = 2 * label") == 60
    e = err(
        shop,
        "select features.create_training_set('fs_train', 'select 1 as customer_id, now() as event_timestamp', array['customer_stats@1:country'])",
    )
    assert e.sqlstate == "42P07"


def test_drift_flags_a_shift_and_stays_quiet_without_one(sconn):
    c = sconn
    c.execute("create table fs_drift (customer_id int, ts timestamptz, x float8)")
    rnd = random.Random(7)
    rows = [(i, T0 + timedelta(minutes=i), rnd.gauss(0, 1)) for i in range(2000)]  # day 1: N(0,1)
    rows += [(i, T0 + timedelta(days=2, minutes=i), rnd.gauss(0, 1)) for i in range(2000)]  # day 3: N(0,1)
    rows += [(i, T0 + timedelta(days=4, minutes=i), rnd.gauss(0.8, 1)) for i in range(2000)]  # day 5: shifted
    with c.cursor() as cur:
        cur.executemany("insert into fs_drift values (%s, %s, %s)", rows)
    c.execute("""select features.create_feature_view('drifty', 'customer', 'fs_drift', 'ts', '[{"name": "x"}]')""")
    runs = [
        one(
            c,
            "select run_id from features.materialize('drifty', %s, %s)",
            [T0 + timedelta(days=d), T0 + timedelta(days=d + 2)],
        )
        for d in (0, 2, 4)
    ]
    same = row(c, "select * from features.drift('drifty', 'x', %s, %s)", [f"run:{runs[0]}", f"run:{runs[1]}"])
    shifted = row(c, "select * from features.drift('drifty', 'x', %s, %s)", [f"run:{runs[0]}", "latest"])
    assert same["drifted"] is False and same["psi"] < 0.1
    assert shifted["drifted"] is True and shifted["psi"] > 0.2 and shifted["ks"] > 0.2
    assert shifted["feature_view"] == "drifty@1" and shifted["baseline_n"] == shifted["current_n"] == 2000
    assert shifted["current_mean"] - shifted["baseline_mean"] > 0.5
    # 'previous' is the materialization before 'latest': two real runs without knowing their ids
    prev = row(c, "select * from features.drift('drifty', 'x', 'previous', 'latest')")
    assert prev["baseline_window"].startswith(f"run:{runs[1]} (materialize")
    assert prev["current_window"].startswith(f"run:{runs[2]} (materialize") and prev["drifted"] is True
    rng = row(
        c,
        "select * from features.drift('drifty', 'x', %s, %s)",
        [
            f"[{T0.isoformat()},{(T0 + timedelta(days=1)).isoformat()})",
            f"[{(T0 + timedelta(days=2)).isoformat()},{(T0 + timedelta(days=3)).isoformat()})",
        ],
    )
    assert rng["drifted"] is False and rng["baseline_n"] == 1440
    e = err(c, "select features.drift('drifty', 'x', 'yesterday', 'latest')")
    assert e.sqlstate == "22023" and "tstzrange" in e.diag.message_hint
    # a push after the materializations: 'latest' still means the latest materialization, and a window of a
    # single value says which window, what it holds, and which runs there are
    push = one(
        c,
        "select run_id from features.push('drifty', %s)",
        [json.dumps([{"customer_id": 1, "ts": (T0 + timedelta(days=9)).isoformat(), "x": 1.0}])],
    )
    again = row(c, "select * from features.drift('drifty', 'x', %s, %s)", [f"run:{runs[0]}", "latest"])
    assert again["psi"] == shifted["psi"] and again["current_window"].startswith(f"run:{runs[2]} (materialize")
    e = err(c, "select features.drift('drifty', 'x', %s, 'latest')", [f"run:{push}"])
    assert e.sqlstate == "22000" and "at least 2" in str(e)
    assert f"run:{push} (push" in e.diag.message_detail and "holds 1 non-null" in e.diag.message_detail
    assert f"run:{runs[2]} (materialize" in e.diag.message_hint
    other = one(
        c,
        "select max(id) from features.materialization_runs r where view_id <> (select id from features.feature_views where name = 'drifty')",
    )
    e = err(c, "select features.drift('drifty', 'x', %s, 'latest')", [f"run:{other}"])
    assert e.sqlstate == "42704" and "not a run of feature view drifty@1" in str(e)
    e = err(c, "select features.drift('drifty', 'x', null, 'latest')")
    assert e.sqlstate == "22023" and "None" not in str(e)


def test_check_skew_strict_fails_loudly_on_divergence(shop):
    shop.execute("create table fs_skew (customer_id int, ts timestamptz, y int)")
    shop.execute("insert into fs_skew select g, now() - interval '1 hour', g from generate_series(1, 20) g")
    shop.execute("""select features.create_feature_view('skewy', 'customer', 'fs_skew', 'ts', '[{"name": "y"}]')""")
    shop.execute("select features.materialize_incremental('skewy')")
    assert one(shop, "select mismatches from features.check_skew('skewy', 50, strict => true)") == 0
    # a pushed row is online and offline but not in the source: nothing to recompute, not skew
    shop.execute(
        "select features.push('skewy', %s)",
        [json.dumps([{"customer_id": 99, "ts": datetime.now(UTC).isoformat(), "y": 7}])],
    )
    r = row(shop, "select * from features.check_skew('skewy', 50, strict => true)")
    assert r["mismatches"] == 0 and r["not_in_source"] == 1 and r["sampled"] == 21
    # the source changes after materialization: online no longer equals the definition
    shop.execute("update fs_skew set y = y + 1 where customer_id <= 5")
    r = row(shop, "select * from features.check_skew('skewy', 50)")
    assert r["sampled"] == 21 and r["source_mismatches"] == 5 and r["offline_mismatches"] == 0
    assert r["feature_view"] == "skewy@1" and r["mismatch_rate"] == pytest.approx(5 / 21, abs=1e-6)
    assert len(r["examples"]) == 5 and {"online", "offline", "recomputed"} <= set(r["examples"][0])
    e = err(shop, "select features.check_skew('skewy', 50, strict => true, threshold => 0.1)")
    assert e.sqlstate == "IXF01" and "skew" in str(e)


def test_bad_input_gives_clear_errors(shop):
    cases = [
        ("select features.get_online(array['customer_stats@1:nope'], '{\"customer_id\": 1}')", "42704", "no feature"),
        ("select features.get_online(array['nope:amount'], '{\"customer_id\": 1}')", "42704", "does not exist"),
        (
            "select features.get_online(array['customer_stats@1:amount'], '{\"customer_id\": \"abc\"}')",
            "22023",
            "integer",
        ),
        ("select features.get_online(array['customer_stats@1:amount'], '{\"cust\": 1}')", "22023", "missing"),
        (
            "select features.get_online(array['customer_stats@1:amount', 'customer_stats@2:amount'], '{\"customer_id\": 1}')",
            "42710",
            "more than one view",
        ),
        (
            "select features.get_historical('select 1 as customer_id', array['customer_stats@1:amount'])",
            "42703",
            "timestamp",
        ),
        (
            "select features.get_historical('select ''a''::text as customer_id, now() as event_timestamp', array['customer_stats@1:amount'])",
            "42804",
            "type",
        ),
        (
            "select features.create_feature_view('nots', 'customer', 'fs_orders', 'created', '[{\"name\": \"amount\"}]')",
            "42703",
            "no timestamp column",
        ),
        (
            "select features.create_feature_view('nots', 'customer', 'no_such_table', 'ts', '[{\"name\": \"amount\"}]')",
            "42P01",
            "not a table",
        ),
        (
            "select features.create_feature_view('nots', 'nobody', 'fs_orders', 'ts', '[{\"name\": \"amount\"}]')",
            "42704",
            "entity",
        ),
        (
            "select features.create_feature_view('nots', 'customer', 'fs_orders', 'ts', '[{\"name\": \"amount\", \"expr\": \"amount +\"}]')",
            "42601",
            "expression of feature amount",
        ),
        (
            'select features.push(\'customer_stats@1\', \'[{"customer_id": 1, "ts": "2024-01-01", "amount": 1, "amount_x2": 2, "country": "DE", "extra": 1}]\')',
            "42703",
            "extra",
        ),
        (
            'select features.push(\'customer_stats@1\', \'[{"customer_id": 1, "ts": "2024-01-01", "amount": 1}]\')',
            "22023",
            "lack fields",
        ),
        (
            'select features.push(\'customer_stats@1\', \'[{"customer_id": 1, "ts": null, "amount": 1, "amount_x2": 2, "country": "DE"}]\')',
            "22004",
            "null timestamp",
        ),
        (
            'select features.push(\'customer_stats@1\', \'[{"customer_id": 1, "ts": "2024-01-01", "amount": "lots", "amount_x2": 2, "country": "DE"}]\')',
            "22P02",
            "declared type",
        ),
        ("select features.schedule('customer_stats', '*/5 * * * *')", "0A000", "pg_cron"),
        ("select features.materialize('customer_stats', '2024-02-01', '2024-01-01')", "22023", "start_ts < end_ts"),
    ]
    for sql, state, text in cases:
        e = err(shop, sql)
        assert e.sqlstate == state, (sql, e.sqlstate, str(e))
        assert text in (str(e) + " " + (e.diag.message_detail or "")), (sql, str(e))
    # nothing was half-written by the failed pushes
    store = one(shop, "select offline_table from features.feature_views where name = 'customer_stats' and version = 1")
    assert one(shop, f"select count(*) from {store} where event_ts = '2024-01-01'") == 0


def test_entity_key_kinds_are_decided_in_sql(sconn):
    """The one implementation of entity-key kinds (features._key_kind), as the server runs it."""
    kinds = dict(
        sconn.execute(
            "select t, features._key_kind(t) from unnest(array['integer', 'bigint', 'smallint', 'text', "
            "'character varying(20)', 'character(3)', 'uuid', 'name', 'double precision', 'jsonb', 'numeric']) t"
        ).fetchall()
    )
    assert kinds["integer"] == kinds["bigint"] == kinds["smallint"] == "int"
    assert kinds["text"] == kinds["character varying(20)"] == kinds["character(3)"] == kinds["uuid"] == "text"
    assert kinds["double precision"] is kinds["jsonb"] is kinds["numeric"] is None


def test_definitions_refuse_code_of_other_schemas_and_floods(shop):
    """Types are built-in (a domain's CHECK would run as whoever writes the store); several statements in an
    expression are refused before anything runs; a wrong year cannot create thousands of partitions."""
    shop.execute("create domain fs_dom as float8 check (value > 0)")
    shop.execute(
        "select features.create_feature_view('fs_daily', 'customer', 'fs_orders', 'ts', "
        '\'[{"name": "amount", "type": "float8"}]\', partition_by => \'day\')'
    )
    cases = [
        (
            "select features.create_feature_view('dom_view', 'customer', 'fs_orders', 'ts', "
            '\'[{"name": "amount", "type": "fs_dom"}]\')',
            "42804",
            "not a built-in",
        ),
        (
            "select features.create_feature_view('dom_view', 'customer', "
            "'select customer_id, ts, amount::fs_dom as a from fs_orders', 'ts', '[{\"name\": \"a\"}]')",
            "42804",
            "not a built-in",
        ),
        (
            "select features.create_feature_view('inj_view', 'customer', 'fs_orders', 'ts', "
            '\'[{"name": "a", "expr": "1) as x from fs_orders; create table fs_pwned (i int); select (1"}]\')',
            "42601",
            "several",
        ),
        (
            "select features.create_entity('bad_keys', array['event_ts'])",
            "22023",
            "reserved",
        ),
        (
            "select features.create_entity(repeat('e', 64), array['k'])",
            "42622",
            "63 bytes",
        ),
        ("select features.push('fs_daily', %s)", "54000", "more than 1000 in one call"),
        ("select features.materialize('customer_stats@1', null, '2024-01-01')", "22023", "start_ts < end_ts"),
        ("select features.create_training_set(null, 'select 1', array['customer_stats@1:amount'])", "22023", "empty"),
        ("select features.check_skew('customer_stats@1', 10, threshold => 2)", "22023", "threshold"),
        (
            "select features.create_training_set('pg_temp.fs_tmp', 'select 1 as customer_id, now() as event_timestamp', "
            "array['customer_stats@1:amount'])",
            "22023",
            "kept table",
        ),
        ("select features.get_online(array['customer_stats@1:amount'], null)", "22023", "JSON object"),
        ("select features.get_online(null, '{\"customer_id\": 1}')", "22023", "no features"),
        (
            "select features.get_online(array['customer_stats@1:amount'], '{\"customer_id\": 1e309}')",
            "22023",
            "integer",
        ),
    ]
    for sql, state, text in cases:
        params = None
        if "%s" in sql:
            # rows on 1,001 days of a view partitioned by day (two rows, 1924 and 2024, asked for the 36,525
            # partitions between them until only the periods that hold rows got one)
            t0 = datetime(1924, 1, 1, tzinfo=UTC)
            params = [
                json.dumps(
                    [{"customer_id": 1, "amount": 1, "ts": (t0 + timedelta(days=d)).isoformat()} for d in range(1001)]
                )
            ]
        e = err(shop, sql, params)
        assert e.sqlstate == state, (sql, e.sqlstate, str(e))
        assert text in str(e) + " " + (e.diag.message_detail or ""), (sql, str(e))
        assert "None" not in str(e) and not str(e).startswith("plpy"), str(e)
    assert one(shop, "select to_regclass('fs_pwned')") is None


def test_upgrade_gives_existing_offline_stores_their_views_tenant(empty_db):
    """Migration 0011 on a database with feature data of 0.1.0: the offline store gets its view's tenant
    (default and check, then the forced tenant policies), the on-demand row names its function's signature."""
    import sys

    from indb.install import install

    dsn = empty_db("indb_fs_upgrade")
    install(dsn, venv=sys.prefix, target="0010", apply_sql=False)
    with psycopg.connect(dsn, autocommit=True) as c:
        eid = one(c, "insert into features.entities (name, join_keys) values ('old_ent', array['k']) returning id")
        vid = one(
            c,
            """insert into features.feature_views (name, version, entity_id, source, source_sql, timestamp_column,
                 join_keys, key_types, features, offline_table, tenant)
               values ('old_view', 1, %s, 'old_src', 'select * from old_src', 'ts', array['k'], array['int'],
                       '[{"name": "x", "type": "double precision", "expr": "x"}]', 'features.fv_1_offline', 'acme')
               returning id""",
            [eid],
        )
        c.execute(
            f"create table features.fv_{vid}_offline (k integer not null, event_ts timestamptz not null, "
            "written_at timestamptz not null default now(), x double precision, primary key (k, event_ts)) "
            "partition by range (event_ts)"
        )
        c.execute(
            f"create table features.fv_{vid}_p20240101 partition of features.fv_{vid}_offline "
            "for values from ('2024-01-01') to ('2025-01-01')"
        )
        c.execute(f"insert into features.fv_{vid}_offline (k, event_ts, x) values (1, '2024-02-01', 1.5)")
        c.execute("create function features.odfv_1(_req jsonb, _f jsonb) returns float8 language sql as 'select 1.0'")
        c.execute(
            """insert into features.on_demand_features (name, expression, type, inputs, function_name)
               values ('old_odf', '1.0', 'double precision', '{}', 'features.odfv_1')"""
        )
    install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        off = f"features.fv_{vid}_offline"
        assert one(c, f"select array_agg(distinct tenant) from {off}") == ["acme"]
        assert (
            one(
                c,
                "select pg_get_expr(adbin, adrelid) from pg_attrdef d join pg_attribute a on a.attrelid = d.adrelid "
                "and a.attnum = d.adnum where d.adrelid = %s::regclass and a.attname = 'tenant'",
                [off],
            )
            == "'acme'::text"
        )
        assert one(
            c,
            "select relforcerowsecurity and relowner = 'indb_owner'::regrole from pg_class where oid = %s::regclass",
            [off],
        )
        assert one(c, "select count(*) from pg_policy where polrelid = %s::regclass", [off]) == 4
        assert one(c, "select function_name::regprocedure::text from features.on_demand_features") == (
            "features._odfv_1(jsonb,jsonb)"
        )
        assert one(c, "select features._odfv_function(o) from features.on_demand_features o") == "features._odfv_1"
        assert one(c, "select has_function_privilege('indb_app', 'features._odfv_1(jsonb, jsonb)', 'execute')")
        assert (
            one(
                c,
                "select count(*) from pg_attribute where attrelid = 'features.materialization_runs'::regclass "
                "and attname = 'started_by'",
            )
            == 1
        )


# ---------------------------------------------------------------------------------------------------------
# progress in ml.progress, seen from another session while the call runs

SLOW_TRIGGER = """
create or replace function public.fs_slow_row() returns trigger language plpgsql as $$
begin
  if new.x::bigint % {every} = 0 then perform pg_sleep({sleep}); end if;
  if new.x = {fail_at} then raise exception 'fs_slow_row: planned failure'; end if;
  return new;
end $$;
create trigger fs_slow before insert on {store} for each row execute function public.fs_slow_row();
"""


def slow_view(c, name: str, n: int, every: int, sleep: float, fail_at: int = -1) -> str:
    """A view over n rows (one a day-partition per 10 rows) whose offline writes sleep every `every` rows."""
    c.execute(f"create table {name}_src (customer_id int, ts timestamptz, x float8)")
    c.execute(
        f"insert into {name}_src select g % 7, timestamptz '2024-01-01' + (g / 10) * interval '1 day' + g * interval '1 s', g "
        f"from generate_series(1, {n}) g"
    )
    c.execute(
        f"""select features.create_feature_view('{name}', 'customer', '{name}_src', 'ts', '[{{"name": "x"}}]',
                                                 partition_by => 'day')"""
    )
    store = one(c, "select offline_table from features.feature_views where name = %s", [name])
    c.execute(SLOW_TRIGGER.format(every=every, sleep=sleep, fail_at=fail_at, store=store))
    return store


def watch_progress(observer, call, command: str) -> tuple[list[tuple], object]:
    """Run call() in a thread; collect ml.progress rows of `command` seen meanwhile from `observer`."""
    import threading
    import time

    out: dict = {}

    def run() -> None:
        try:
            out["result"] = call()
        except Exception as e:  # the failing case: kept to look at
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    seen = []
    deadline = time.time() + 60
    while t.is_alive() and time.time() < deadline:
        seen += observer.execute(
            "select command, target, phase, done, total, unit from ml.progress where command = %s", [command]
        ).fetchall()
        time.sleep(0.1)
    t.join()
    return seen, out.get("result", out.get("error"))


def test_materialize_reports_its_phases_and_rows_in_ml_progress(shop, db_dsn, conn):
    store = slow_view(shop, "fs_prog", 400, every=10, sleep=0.03)
    with psycopg.connect(db_dsn, autocommit=True) as worker:
        seen, r = watch_progress(
            conn,
            lambda: worker.execute(
                "select rows_written from features.materialize('fs_prog', '2024-01-01', '2025-01-01')"
            ).fetchone()[0],
            "features.materialize",
        )
    assert r == 400
    assert seen, "the materialization never showed up in ml.progress"
    assert {s[1] for s in seen} == {"fs_prog@1"} and {s[5] for s in seen} == {"rows"}
    writing = [s for s in seen if s[2] == "writing the offline store"]
    assert writing and {s[4] for s in writing} == {400}
    done = [s[3] for s in writing]
    assert done == sorted(done) and 0 < max(done) <= 400  # rows done move forward, partition by partition
    assert one(conn, "select count(*) from ml.progress where command like 'features.%'") == 0  # gone at the end
    assert one(shop, f"select count(*) from {store}") == 400


def test_materialize_incremental_reports_under_its_own_name(shop, db_dsn, conn):
    slow_view(shop, "fs_prog_inc", 100, every=10, sleep=0.05)
    with psycopg.connect(db_dsn, autocommit=True) as worker:
        seen, r = watch_progress(
            conn,
            lambda: worker.execute(
                "select rows_written from features.materialize_incremental('fs_prog_inc')"
            ).fetchone()[0],
            "features.materialize_incremental",
        )
    assert r == 100
    assert seen and {s[1] for s in seen} == {"fs_prog_inc@1"}
    assert any(s[2] == "writing the offline store" and s[4] == 100 for s in seen), seen


def test_a_failed_materialization_leaves_nothing_in_ml_progress(shop, db_dsn, conn):
    slow_view(shop, "fs_prog_fail", 200, every=20, sleep=0.05, fail_at=150)
    with psycopg.connect(db_dsn, autocommit=True) as worker:
        seen, e = watch_progress(
            conn,
            lambda: worker.execute("select * from features.materialize('fs_prog_fail', '2024-01-01', '2025-01-01')"),
            "features.materialize",
        )
        assert isinstance(e, psycopg.Error) and "planned failure" in str(e)
        assert seen  # it was there while it ran
        # the failed call's backend is still alive, and idle: its progress is gone
        pid = one(worker, "select pg_backend_pid()")
        assert one(conn, "select count(*) from ml.progress where pid = %s", [pid]) == 0
    assert one(shop, "select status from features.materialization_runs order by id desc limit 1") != "running"


def test_a_large_push_reports_its_progress_and_a_small_one_does_not(shop, db_dsn, conn):
    slow_view(shop, "fs_prog_push", 1, every=500, sleep=0.1)
    rows = [{"customer_id": i % 50, "ts": (T0 + timedelta(hours=i)).isoformat(), "x": i} for i in range(10000)]
    with psycopg.connect(db_dsn, autocommit=True) as worker:
        seen, r = watch_progress(
            conn,
            lambda: worker.execute(
                "select rows_read from features.push('fs_prog_push', %s)", [json.dumps(rows)]
            ).fetchone()[0],
            "features.push",
        )
        assert r == 10000
        assert seen and {s[1] for s in seen} == {"fs_prog_push@1"} and {s[4] for s in seen} == {10000}
        assert any(s[2] == "writing the offline store" and s[3] > 0 for s in seen), seen
        small, r = watch_progress(
            conn,
            lambda: worker.execute(
                "select rows_read from features.push('fs_prog_push', %s)", [json.dumps(rows[:500])]
            ).fetchone()[0],
            "features.push",
        )
        assert r == 500 and small == []


# ---------------------------------------------------------------------------------------------------------
# results that said something other than what happened


def test_a_null_value_is_reported_as_null_value_not_present(shop):
    shop.execute(
        "select * from features.push('customer_stats@1', %s)",
        [
            json.dumps(
                [
                    {
                        "customer_id": 77,
                        "ts": datetime.now(UTC).isoformat(),
                        "amount": 3,
                        "amount_x2": None,
                        "country": "DE",
                    }
                ]
            )
        ],
    )
    r = one(
        shop,
        "select features.get_online(array['customer_stats@1:amount', 'customer_stats@1:amount_x2'], '{\"customer_id\": 77}')",
    )
    assert r["_status"] == {"amount": "present", "amount_x2": "null_value"} and r["amount_x2"] is None
    rows = [
        x[0]
        for x in shop.execute(
            "select features.get_online_batch(array['customer_stats@1:amount_x2'], '[{\"customer_id\": 77}]')"
        )
    ]
    assert rows[0]["_status"] == {"amount_x2": "null_value"}
    # an on-demand feature whose inputs are present but whose value is null
    shop.execute(
        """select features.create_on_demand_feature('fs_gap', 'request_amount - amount', 'float8',
                 array['customer_stats@1:amount'], '{"request_amount": "float8"}')"""
    )
    r = one(shop, "select features.get_online(array['fs_gap'], '{\"customer_id\": 77}', '{\"request_amount\": null}')")
    assert r["fs_gap"] is None and r["_status"]["fs_gap"] == "null_value"
    r = one(shop, "select features.get_online(array['fs_gap'], '{\"customer_id\": 77}', '{\"request_amount\": 5}')")
    assert r["fs_gap"] == 2 and r["_status"]["fs_gap"] == "present"


def test_an_on_demand_feature_and_its_input_together_in_a_point_in_time_join(shop):
    q = "select 3 as customer_id, now() as event_timestamp, 12.5::float8 as request_amount"
    hist = one(shop, "select features.get_historical(%s, array['customer_stats@1:amount', 'amount_vs_request'])", [q])
    assert hist["amount"] == 5 and hist["amount_vs_request"] == 7.5
    sql = one(shop, "select features.historical_query(%s, array['customer_stats@1:amount', 'amount_vs_request'])", [q])
    assert shop.execute(sql).fetchone()[-2:] == (5, 7.5)


def test_a_mostly_null_training_set_warns_and_says_why(shop):
    notices: list = []

    def keep(d: psycopg.errors.Diagnostic) -> None:  # a Diagnostic is valid only inside the handler
        notices.append((d.severity_nonlocalized, d.message_primary, d.message_detail, d.message_hint))

    shop.add_notice_handler(keep)
    try:
        r = row(
            shop,
            """select * from features.create_training_set('fs_sparse',
                 'select customer_id, ts - interval ''1 year'' as event_timestamp from fs_orders',
                 array['customer_stats@1:amount'])""",
        )
    finally:
        shop.remove_notice_handler(keep)
    assert r["rows"] == 60
    w = [n for n in notices if n[0] == "WARNING"]
    assert w and "amount (100%)" in w[0][1] and "customer_stats@1: 2024" in w[0][2], notices
    assert "features.materialize" in w[0][3]


def test_materialize_incremental_past_the_end_does_nothing(shop):
    shop.execute("create table fs_future (customer_id int, ts timestamptz, n int)")
    shop.execute(
        """select features.create_feature_view('fs_future_v', 'customer', 'fs_future', 'ts', '[{"name": "n"}]')"""
    )
    shop.execute("select * from features.materialize('fs_future_v', '2024-01-01', now() + interval '1 year')")
    r = row(shop, "select * from features.materialize_incremental('fs_future_v')")
    assert r["run_id"] is None and r["rows_read"] == 0 and r["window_start"] > r["window_end"]


def test_skew_tolerates_float_rounding_of_recomputed_values(sconn):
    assert one(
        sconn, """select features._same_values('{"a": 0.30000000000000004, "b": "x"}', '{"a": 0.3, "b": "x"}')"""
    )
    assert not one(sconn, """select features._same_values('{"a": 0.31}', '{"a": 0.3}')""")
    assert not one(sconn, """select features._same_values('{"a": 1}', '{"a": 1, "b": 2}')""")
    assert not one(sconn, """select features._same_values('{"a": null}', '{"a": 0}')""")
    assert one(sconn, """select features._same_values('{"a": null}', '{"a": null}')""")


def test_errors_of_the_new_paths_name_the_problem_and_the_fix(shop):
    cases = [
        ("select * from features.training_set('fs_nosuch')", "42704", "fs_nosuch"),
        ("select * from features.drift('skewy', 'y', 'previous', 'latest')", "42704", "second"),
        ("select * from features.drift('customer_stats@1', 'amount', 'run:999999', 'latest')", "42704", "999999"),
        ("select * from features.push('customer_stats@1', '[1]')", "22023", "JSON object"),
        ("select * from features.materialize('customer_stats@1', null, null)", "22023", "start_ts"),
    ]
    for sql, state, text in cases:
        e = err(shop, sql)
        assert e.sqlstate == state and text in str(e), (sql, e.sqlstate, str(e))
        assert e.diag.message_hint and "None" not in str(e) + e.diag.message_hint, (sql, str(e))


def _two_views_with_every_kind_of_row(c, prefix: str, more_rows: str = "") -> None:
    """Views <prefix> (a, b, c; ttl 1 day) and <prefix>2 (z) of entity <prefix>_key, materialized, whose online
    rows are of every kind: all present (1), a null (2; 5 for c), a feature missing from the stored object (3),
    past the ttl (4), a stored key that is not a feature (5), not found (6); ``more_rows`` adds source rows."""
    c.execute(f"create table {prefix}_src (k int, ts timestamptz, a float8, b float8, c text)")
    c.execute(f"create table {prefix}2_src (k int, ts timestamptz, z int)")
    c.execute(
        f"insert into {prefix}_src values (1, now(), 1, 2, 'x'), (2, now(), null, 2, 'y'), (3, now(), 3, 4, 'z'), "
        f"(4, now() - interval '3 days', 5, 6, 'w'), (5, now(), 7, 8, null){more_rows}"
    )
    c.execute(f"insert into {prefix}2_src values (1, now(), 10), (3, now(), null)")
    c.execute("select features.create_entity(%s, array['k'])", [f"{prefix}_key"])
    c.execute(
        "select features.create_feature_view(%s, %s, %s, 'ts', "
        """'[{"name": "a"}, {"name": "b"}, {"name": "c"}]', ttl => '1 day')""",
        [prefix, f"{prefix}_key", f"{prefix}_src"],
    )
    c.execute(
        """select features.create_feature_view(%s, %s, %s, 'ts', '[{"name": "z"}]')""",
        [f"{prefix}2", f"{prefix}_key", f"{prefix}2_src"],
    )
    for v in (prefix, f"{prefix}2"):
        c.execute("select * from features.materialize(%s, now() - interval '10 days', now() + interval '1 hour')", [v])
    # a writer's direct write of the online store: entity 3 lacks b, entity 5 holds a key that is not a feature
    view = "(select id from features.feature_views where name = %s)"
    c.execute(
        f"update features.online_store set values = values - 'b' where view_id = {view} and entity_key = '[3]'",
        [prefix],
    )
    c.execute(
        f"""update features.online_store set values = values || '{{"secret": 1}}' where view_id = {view} """
        "and entity_key = '[5]'",
        [prefix],
    )


def test_get_online_batch_fast_path_answers_like_the_general_path(sconn):
    """get_online_batch answers most rows with one jsonb operation per (entity, view); every kind of row (all
    present, a null value, a feature missing from the stored object, a stored key that is not a feature, past
    the ttl, not found), feature subsets, '*', two views and full_names must give what the general per-feature
    path (features._get_online_batch_slow) gives."""
    c = sconn
    _two_views_with_every_kind_of_row(c, "fb")
    # the entity keys as callers spell them: extra keys (one named like a feature, one like _status), a key
    # as a string must come back as they were passed, whatever path answers the row
    keys = json.dumps(
        [{"k": k} for k in (1, 2, 3, 4, 5, 6, 1)]
        + [{"k": 1, "note": "x"}, {"k": 1, "a": 99}, {"k": 1, "_status": "mine"}, {"k": "1"}, {"k": 3, "b": 0}]
    )
    for feats in (
        ["fb:*"],
        ["fb:a"],
        ["fb:c", "fb:a"],
        ["fb:a", "fb2:z"],
        ["fb2:z", "fb:*"],
        ["fb:b"],
        ["fb:a", "fb:b", "fb:c"],
    ):
        for full in (False, True):
            # compared as text: a number's spelling (1 against 1.0) must not change either
            got = [
                r[0] for r in c.execute("select features.get_online_batch(%s, %s, null, %s)::text", [feats, keys, full])
            ]
            want = [
                r[0]
                for r in c.execute(
                    "select features._get_online_batch_slow(%s, %s, null, %s)::text", [feats, keys, full]
                )
            ]
            assert got == want, (feats, full)
            assert all("secret" not in r for r in got)
    got = [r[0] for r in c.execute("select features.get_online_batch(array['fb:*'], %s)", [keys])]
    assert [r["_status"] for r in got][:6] == [
        {"a": "present", "b": "present", "c": "present"},
        {"a": "null_value", "b": "present", "c": "present"},
        {"a": "present", "b": "null_value", "c": "present"},
        {"a": "outside_ttl", "b": "outside_ttl", "c": "outside_ttl"},
        {"a": "present", "b": "present", "c": "null_value"},
        {"a": "not_found", "b": "not_found", "c": "not_found"},
    ]


def test_get_online_answers_like_the_general_path(sconn):
    """get_online answers the common request (plain names of one view) from the stored object and its other
    requests with one statement that builds the answer feature by feature: for every kind of row (all present,
    a null value, a feature missing from the stored object, a stored key that is not a feature, past the ttl,
    not found), feature subsets in any order, '*', a version, two views, full_names and entity keys spelled with
    extra keys, both must give what the general implementation (features._get_online_slow) gives, as text."""
    c = sconn
    _two_views_with_every_kind_of_row(c, "fo", ", (7, now(), 1.5, 1e15, 'v')")
    keys = [{"k": k} for k in (1, 2, 3, 4, 5, 6, 7)] + [
        {"k": 1, "note": "x"},
        {"k": 1, "a": 99},
        {"k": 1, "_status": "mine", "_event_ts": 0},
        {"k": "1"},
        {"k": 4, "b": 0},
        {"k": 6, "_event_ts": "kept?"},
    ]
    cases = 0
    for feats in (
        ["fo:a", "fo:b", "fo:c"],
        ["fo:c", "fo:a"],
        ["fo:b"],
        ["fo@1:a", "fo@1:c"],
        ["fo:a", "fo@1:b"],
        ["fo:*"],
        ["fo:a", "fo2:z"],
        ["fo2:z"],
        ["fo:a", "fo:a"],
        # spellings the common path must leave to the others (answer or precise error)
        ["fo:a", "fo@1:b"],
        ["fo@01:a"],
        ["fo@1@1:a"],
        ["fo:a:b"],
        [" fo:a", "fo:b "],
        ["fo : c"],
        ["fo:"],
        [":a"],
        ["fo:a", None],
        ["fo:A"],
        ["fo2:z", "fo:z"],
    ):
        for full in (False, True):
            for k in keys:
                args = [feats, json.dumps(k), full]
                sql = "select features.{}(%s, %s::jsonb, null, %s)::text"
                try:
                    want = c.execute(sql.format("_get_online_slow"), args).fetchone()[0]
                except psycopg.Error as e:
                    with pytest.raises(psycopg.Error) as got_err:
                        c.execute(sql.format("get_online"), args)
                    assert got_err.value.sqlstate == e.sqlstate, (feats, full, k)
                    continue
                got = c.execute(sql.format("get_online"), args).fetchone()[0]
                assert got == want, (feats, full, k)
                assert "secret" not in got
                cases += 1
    assert cases > 150
    # what each kind of row gives through the common path
    got = [
        c.execute("select features.get_online(array['fo:c', 'fo:a'], %s)", [json.dumps({"k": k})]).fetchone()[0]
        for k in (1, 2, 4, 6)
    ]
    assert [g["_status"] for g in got] == [
        {"a": "present", "c": "present"},
        {"a": "null_value", "c": "present"},
        {"a": "outside_ttl", "c": "outside_ttl"},
        {"a": "not_found", "c": "not_found"},
    ]
    assert got[0]["a"] == 1 and got[0]["c"] == "x" and got[2]["a"] is None and "_event_ts" not in got[3]
    assert set(got[2]["_event_ts"]) == {"fo@1"}


def test_feature_references_parse_as_the_syntax_says(sconn):
    """A feature reference is parsed by split_part when it has no blanks (get_online's hot path) and by the
    regular expression that defines the syntax otherwise: both give the same answer for every kind of reference,
    well-formed or not (a reference the syntax refuses must not be accepted by the fast path)."""
    pattern = r"^\s*([A-Za-z_][A-Za-z0-9_]*)(?:@([0-9]{1,9}))?\s*:\s*([A-Za-z_][A-Za-z0-9_]*|\*)\s*$"
    refs = [
        "v:f",
        "v:*",
        "v@2:f",
        "v@123456789:f",
        "_v1:_f2",
        " v:f",
        "v : f",
        "v@2 :f",
        "v:f ",
        "\tv@3:\tf\n",
        "v@:f",
        "v@1234567890:f",
        "v@2@3:f",
        "v@x:f",
        "1v:f",
        "v:1f",
        "v:f:g",
        ":f",
        "v:",
        "v",
        "",
        "v:**",
        "v:f*",
        "v-w:f",
        "v:f-g",
        "vé:f",
        "v:fé",
        "v@٣:f",
        "v@+1:f",
        "v@-1:f",
        "v@ 1:f",
        "v @1:f",
        "V_9@09:Z_0",
        "v:*x",
        "a" * 300 + ":b",
        "v\u00a0:f",
        "v:f\u0000".replace("\u0000", ""),
        "v@0:f",
        "*:f",
        "v@2:*",
        "v:f:",  # a second separator: the syntax refuses it (an earlier fast path took it as v:f)
        "v@2:*:",
    ]
    rng = random.Random(16)
    alphabet = "ab_19@: *\t-é"
    refs += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))) for _ in range(1000)]
    # and references built from pieces, valid and not: names, versions, separators, blanks
    names = ["v", "view_1", "_x", "9a", "a-b", "", "é", "*"]
    versions = ["", "@1", "@42", "@", "@1234567890", "@x", "@1@2"]
    blank = ["", "", "", " ", "\t"]
    for _ in range(1000):
        refs.append(
            rng.choice(blank)
            + rng.choice(names)
            + rng.choice(versions)
            + rng.choice(blank)
            + rng.choice([":", ":", "::", ""])
            + rng.choice(blank)
            + rng.choice(names)
            + rng.choice(blank)
        )
    rows = sconn.execute(
        "select r, features._parse_feature_ref(r), regexp_match(r, %s) from unnest(%s::text[]) r", [pattern, refs]
    ).fetchall()
    differ = [(r, fast, slow) for r, fast, slow in rows if fast != slow]
    assert not differ, differ[:10]
    assert sum(1 for _, fast, _ in rows if fast is not None) > 40  # well-formed references are among them


def test_an_integer_entity_key_takes_the_short_path_only_when_it_gives_the_same_key(sconn):
    """features._online_key builds '[n]' directly for a JSON integer of an int key; every other value goes through
    the general key builder. For each value, the key is the one the general builder gives (or both refuse)."""
    values = [
        "0",
        "-0",
        "17",
        "-17",
        "123456789012345678",
        "-123456789012345678",
        "1234567890123456789",
        "1.5",
        "1e3",
        "-1e3",
        "00017",
        "9223372036854775807",
        "-9223372036854775808",
        '"17"',
        "true",
        "null",
    ]
    for v in values:
        keys = f'{{"user_id": {v}}}'
        try:
            fast = one(sconn, "select features._online_key(%s::jsonb, array['user_id'], array['int'], 'v@1')", [keys])
        except psycopg.Error as e:
            fast = ("error", e.sqlstate)
        try:
            slow = one(sconn, "select features._entity_key(%s::jsonb, array['user_id'], array['int'], 'v@1')", [keys])
        except psycopg.Error as e:
            slow = ("error", e.sqlstate)
        assert fast == slow, (v, fast, slow)


def test_first_batch_calls_of_a_new_connection_do_not_compile_their_plan(sconn, db_dsn):
    """The first five get_online_batch calls of a session are planned for their own arguments; the planner's
    estimate for 100 entities x 20 features passed jit_above_cost, and each call spent 30-40 ms compiling a plan
    that then ran in ~1 ms. auto_explain (EXPLAIN ANALYZE of every statement the calls run) shows no JIT."""
    c = sconn
    c.execute(
        "create table fj_src as select g as k, now() as ts, "
        + ", ".join(f"random() as f{i}" for i in range(1, 21))
        + " from generate_series(1, 500) g"
    )
    c.execute("select features.create_entity('fj_key', array['k'])")
    c.execute(
        "select features.create_feature_view('fj', 'fj_key', 'fj_src', 'ts', %s)",
        [json.dumps([{"name": f"f{i}", "type": "float8"} for i in range(1, 21)])],
    )
    c.execute("select features.materialize_incremental('fj')")
    feats = [f"fj:f{i}" for i in range(1, 21)]
    with psycopg.connect(db_dsn, autocommit=True) as fresh:
        logs = explain_everything(fresh)
        for call in range(7):
            keys = json.dumps([{"k": k} for k in range(1 + call * 50, 101 + call * 50)])
            rows = fresh.execute("select features.get_online_batch(%s, %s)", [feats, keys]).fetchall()
            assert len(rows) == 100 and rows[0][0]["_status"]["f1"] == "present"
        plans = [m for m in logs if "plan:" in m]
        assert len(plans) >= 14  # the calls and the statements inside them were explained
        assert not [m for m in plans if "JIT:" in m], "a get_online_batch statement was compiled"
