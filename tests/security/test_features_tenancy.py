"""Tenants of the feature store (issue 10, item 4): a tenant's feature views, their offline and online stores,
runs, statistics and quarantine are seen and written by that tenant only, through every path, plain SELECT
included. Shared views (made by a session that acts for no tenant) are read by everyone and written only by
sessions that act for no tenant.
"""

from __future__ import annotations

import json
import secrets

import psycopg
import pytest
from helpers import login_name


def uniq(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(3)}"


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def refused(conn, sql, params=None, states=("42501",)) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql, params)
    assert ei.value.sqlstate in states, (sql, ei.value.sqlstate, str(ei.value))
    return ei.value


@pytest.fixture(scope="module")
def acme(sconn, logins):
    """acme's writer defines and materializes a view (with a quarantined row) over acme's source."""
    src = uniq("acme_src")
    sconn.execute(f"create table public.{src} (k int, ts timestamptz, x float8)")
    sconn.execute(
        f"insert into public.{src} select g % 3, timestamptz '2024-01-01' + g * interval '1 day', g - 1 "
        "from generate_series(0, 8) g"
    )
    sconn.execute(f'grant select on public.{src} to "{login_name("acme_writer")}"')
    ent, view = uniq("acme_ent"), uniq("acme_view")
    with psycopg.connect(logins["acme_writer"], autocommit=True) as w:
        w.execute("select features.create_entity(%s, array['k'])", [ent])
        w.execute(
            "select features.create_feature_view(%s, %s, %s, 'ts', %s)",
            [view, ent, f"public.{src}", json.dumps([{"name": "x", "expect": {"min": 0}}])],
        )
        r = w.execute(
            "select to_jsonb(r) from features.materialize(%s, '2023-12-01', '2024-02-01') r", [view]
        ).fetchone()[0]
        assert r["rows_quarantined"] == 1 and r["rows_written"] == 8
    vid = one(sconn, "select id from features.feature_views where name = %s", [view])
    return {"view": view, "entity": ent, "id": vid, "offline": f"features.fv_{vid}_offline", "source": src}


def test_every_row_of_a_tenant_view_carries_its_tenant(sconn, acme):
    vid = acme["id"]
    assert one(sconn, "select tenant from features.feature_views where id = %s", [vid]) == "acme"
    assert one(sconn, "select tenant from features.entities where name = %s", [acme["entity"]]) == "acme"
    for sql in (
        f"select array_agg(distinct tenant) from {acme['offline']}",
        "select array_agg(distinct tenant) from features.online_store where view_id = %(v)s",
        "select array_agg(distinct tenant) from features.materialization_runs where view_id = %(v)s",
        "select array_agg(distinct tenant) from features.statistics where view_id = %(v)s",
        "select array_agg(distinct tenant) from features.quarantine where view_id = %(v)s",
    ):
        assert one(sconn, sql, {"v": vid}) == ["acme"], sql
    # the offline store is forced under the tenant policies, like every tenant table
    assert one(
        sconn, "select relrowsecurity and relforcerowsecurity from pg_class where oid = %s::regclass", [acme["offline"]]
    )


@pytest.mark.parametrize("who", ["globex_reader", "globex_writer", "globex_app", "reader", "writer", "app"])
def test_another_tenant_sees_nothing_of_it_through_any_path(connect_as, acme, who):
    c = connect_as(who)
    vid, view = acme["id"], acme["view"]
    catalogs = {
        "features.feature_views": "id = %(v)s",
        "features.entities": "name = %(e)s",
        "features.online_store": "view_id = %(v)s",
        "features.materialization_runs": "view_id = %(v)s",
        "features.statistics": "view_id = %(v)s",
        "features.quarantine": "view_id = %(v)s",
    }
    for table, where in catalogs.items():
        try:
            n = one(c, f"select count(*) from {table} where {where}", {"v": vid, "e": acme["entity"]})
        except psycopg.errors.InsufficientPrivilege:
            continue  # indb_app does not read the monitoring catalogs at all
        assert n == 0, (who, table)
    if not who.endswith("app"):
        assert one(c, f"select count(*) from {acme['offline']}") == 0
        assert one(c, "select count(*) from features.freshness where name = %s", [view]) == 0
    else:
        refused(c, f"select count(*) from {acme['offline']}")
    refused(c, "select features.get_online(array[%s], '{\"k\": 1}')", [f"{view}:x"], states=("42704",))
    refused(c, "select features.get_online_batch(array[%s], '[{\"k\": 1}]')", [f"{view}:x"], states=("42704",))
    if not who.endswith("app"):
        for sql in (
            "select features.get_historical('select 1 as k, now() as event_timestamp', array[%s])",
            "select features.historical_query('select 1 as k, now() as event_timestamp', array[%s])",
        ):
            refused(c, sql, [f"{view}:x"], states=("42704",))
        refused(c, "select features.drift(%s, 'x', 'latest', 'online')", [view], states=("42704",))
        refused(c, "select features.check_skew(%s)", [view], states=("42704",))


@pytest.mark.parametrize("who", ["globex_writer", "writer"])
def test_another_tenant_cannot_write_into_it(sconn, connect_as, acme, who):
    c = connect_as(who)
    vid, view, off = acme["id"], acme["view"], acme["offline"]
    before = one(sconn, f"select count(*) from {off}")
    refused(
        c,
        "select * from features.push(%s, %s)",
        [view, json.dumps([{"k": 1, "ts": "2024-01-03T00:00:00Z", "x": 5}])],
        states=("42704",),
    )
    refused(c, "select * from features.materialize(%s, '2023-12-01', '2024-02-01')", [view], states=("42704",))
    # plain DML on the stores: the other tenant's rows are invisible, and no row can be planted
    assert c.execute(f"update {off} set x = -1").rowcount == 0
    assert c.execute(f"delete from {off}").rowcount == 0
    refused(c, f"insert into {off} (k, event_ts, x) values (1, '2024-01-20', 7)")
    refused(
        c, f"insert into {off} (k, event_ts, x, tenant) values (1, '2024-01-20', 7, null)", states=("42501", "23514")
    )
    assert c.execute("update features.online_store set values = '{}' where view_id = %s", [vid]).rowcount == 0
    assert c.execute("delete from features.online_store where view_id = %s", [vid]).rowcount == 0
    refused(
        c,
        "insert into features.online_store (view_id, entity_key, values, event_ts) values (%s, '[42]', '{}', now())",
        [vid],
        states=("42704",),
    )
    # the definer helpers do not know the view either
    refused(c, "select features._start_run(%s, 'push')", [vid], states=("42704",))
    refused(c, "select features._ensure_partitions(%s, '2031-01-01', '2031-01-02')", [vid], states=("42704",))
    assert one(sconn, f"select count(*) from {off}") == before
    got = one(connect_as("acme_app"), "select features.get_online(array[%s], '{\"k\": 1}')", [f"{view}:x"])
    assert got["x"] == 6.0


def test_the_tenant_itself_reads_and_writes_it(connect_as, acme):
    view = acme["view"]
    w = connect_as("acme_writer")
    r = one(
        w,
        "select to_jsonb(r) from features.push(%s, %s) r",
        [view, json.dumps([{"k": 1, "ts": "2024-01-20T00:00:00Z", "x": 5}])],
    )
    assert r["rows_written"] == 1
    assert one(connect_as("acme_app"), "select features.get_online(array[%s], '{\"k\": 1}')", [f"{view}:x"])["x"] == 5
    rd = connect_as("acme_reader")
    assert one(rd, f"select count(*) from {acme['offline']}") == 9
    assert one(rd, "select count(*) from features.quarantine where view_id = %s", [acme["id"]]) == 1
    assert one(rd, "select count(*) from features.statistics where view_id = %s", [acme["id"]]) >= 1
    hist = one(
        rd,
        "select features.get_historical('select 1 as k, ''2024-01-21''::timestamptz as event_timestamp', array[%s])",
        [f"{view}:x"],
    )
    assert hist["x"] == 5


def test_a_tenant_app_reads_the_online_store_by_its_primary_key(connect_as, acme):
    """Online serving under row security (every caller but a superuser): get_online and get_online_batch found
    a tenant's rows by a condition row security kept away from the index (a function of the view's columns is
    not leakproof), so each call read the whole online store: 5.7 s for 100 entities of a 10,000-row store,
    growing with every entity stored. They now compute the keys first and read by the primary key: no call
    scans the table or reads a row it does not answer with, and the answers are the tenant's values."""
    view = acme["view"]
    a = connect_as("acme_app")
    a.autocommit = False
    a.execute("set local enable_seqscan = off")  # the small test store would be scanned whatever the condition
    got = one(a, "select features.get_online(array[%s], '{\"k\": 2}')", [f"{view}:x"])
    batch = [
        r[0]
        for r in a.execute(
            'select features.get_online_batch(array[%s], \'[{"k": 0}, {"k": 2}, {"k": 99}]\')', [f"{view}:x"]
        )
    ]
    seq, fetched = a.execute(
        "select seq_scan, idx_tup_fetch from pg_stat_xact_user_tables where relid = 'features.online_store'::regclass"
    ).fetchone()
    a.rollback()
    assert got["_status"]["x"] == "present" and got["x"] is not None
    assert [b["_status"]["x"] for b in batch] == ["present", "present", "not_found"]
    assert batch[1]["x"] == got["x"]
    # one row read per entity found (the condition row security let through alone, the view's id, read every
    # row of the view for each entity)
    assert seq == 0 and fetched == 3, (seq, fetched)


@pytest.mark.parametrize("method", ["asof", "lateral", "lvcf", "merge"])
def test_point_in_time_join_of_each_strategy_under_the_tenant_policies(connect_as, acme, method):
    """Every join strategy reads the offline store under the forced tenant policies: acme's reader gets its own
    values (key 1 has rows on January 2, 5 and 8; no ttl), the other tenant's reader cannot even name the view."""
    ent = (
        "select k, t as event_timestamp from (values (1, '2024-01-01'::timestamptz), (1, '2024-01-05'), "
        "(1, '2024-01-09'), (2, '2024-01-03')) e(k, t)"
    )
    rd = connect_as("acme_reader")
    rd.execute("select set_config('indb.features_pit_method', %s, false)", [method])
    got = [
        r[0]["x"]
        for r in rd.execute("select * from features.get_historical(%s, array[%s])", [ent, f"{acme['view']}:x"])
    ]
    assert got == [None, 3, 6, 1]
    other = connect_as("globex_reader")
    other.execute("select set_config('indb.features_pit_method', %s, false)", [method])
    refused(other, "select * from features.get_historical(%s, array[%s])", [ent, f"{acme['view']}:x"], ("42704",))


def test_the_asof_function_called_directly_reads_as_its_caller(connect_as, acme):
    """features._pit_asof runs the SQL it is given as the caller (SECURITY INVOKER, read-only): the other tenant,
    naming acme's offline table itself, finds none of its rows; no role can make it write."""
    ent = "select 1::int as k, timestamptz '2024-01-09' as t, 1::bigint as k8"
    view_sql = f"select k::int8, event_ts, written_at, x from {acme['offline']}"
    call = "select x from features._pit_asof(%s, 1, array[%s], array[1], array[1], array[null::interval], false) as e(k int, x float8)"
    assert connect_as("acme_reader").execute(call, [ent, view_sql]).fetchone()[0] == 6
    assert connect_as("globex_reader").execute(call, [ent, view_sql]).fetchone()[0] is None
    w = connect_as("acme_writer")
    for sql in (
        f"delete from {acme['offline']} returning k::int8, event_ts, written_at, x",
        f"with d as (delete from {acme['offline']} returning *) select k::int8, event_ts, written_at, x from d",
    ):
        refused(w, call, [ent, sql], ("0A000",))
    assert connect_as("acme_reader").execute(call, [ent, view_sql]).fetchone()[0] == 6


def test_shared_views_are_read_by_every_tenant_and_written_by_none(sconn, connect_as):
    src = uniq("shared_src")
    sconn.execute(f"create table public.{src} (k int, ts timestamptz, x float8)")
    sconn.execute(f"insert into public.{src} values (1, '2024-01-01', 1), (2, '2024-01-02', 2)")
    sconn.execute(f'grant select on public.{src} to "{login_name("writer")}"')
    w = connect_as("writer")  # acts for no tenant: its view is shared
    ent, view = uniq("sh_ent"), uniq("sh_view")
    w.execute("select features.create_entity(%s, array['k'])", [ent])
    w.execute(
        "select features.create_feature_view(%s, %s, %s, 'ts', '[{\"name\": \"x\"}]')", [view, ent, f"public.{src}"]
    )
    w.execute("select * from features.materialize(%s, '2023-12-01', '2024-02-01')", [view])
    vid = one(sconn, "select id from features.feature_views where name = %s", [view])
    assert one(sconn, "select tenant from features.feature_views where id = %s", [vid]) is None
    for who in ("acme_app", "globex_app"):
        assert one(connect_as(who), "select features.get_online(array[%s], '{\"k\": 2}')", [f"{view}:x"])["x"] == 2
    aw = connect_as("acme_writer")
    e = refused(
        aw, "select * from features.push(%s, %s)", [view, json.dumps([{"k": 1, "ts": "2024-01-05T00:00:00Z", "x": 9}])]
    )
    assert "shared" in str(e) and e.diag.message_hint
    # acme's writer cannot add a version of it either, nor plant rows in its stores
    sconn.execute(f'grant select on public.{src} to "{login_name("acme_writer")}"')
    e = refused(
        aw,
        "select features.create_feature_view(%s, %s, %s, 'ts', %s)",
        [view, ent, f"public.{src}", json.dumps([{"name": "x"}, {"name": "y", "type": "float8", "expr": "x + 1"}])],
    )
    assert "shared" in str(e)
    refused(
        aw,
        "insert into features.online_store (view_id, entity_key, values, event_ts) values (%s, '[3]', '{\"x\": 9}', now())",
        [vid],
    )
    refused(aw, f"insert into features.fv_{vid}_offline (k, event_ts, x) values (3, '2024-01-03', 9)")
    assert aw.execute("update features.online_store set values = '{}' where view_id = %s", [vid]).rowcount == 0
    assert one(connect_as("globex_app"), "select features.get_online(array[%s], '{\"k\": 1}')", [f"{view}:x"])["x"] == 1


def test_names_are_unique_across_tenants(sconn, connect_as, acme):
    src = uniq("gx_src")
    sconn.execute(f"create table public.{src} (k int, ts timestamptz, x float8)")
    sconn.execute(f'grant select on public.{src} to "{login_name("globex_writer")}"')
    g = connect_as("globex_writer")
    e = refused(g, "select features.create_entity(%s, array['k'])", [acme["entity"]], states=("42710",))
    assert "another tenant" in str(e)
    ent = uniq("gx_ent")
    g.execute("select features.create_entity(%s, array['k'])", [ent])
    e = refused(
        g,
        "select features.create_feature_view(%s, %s, %s, 'ts', '[{\"name\": \"x\"}]')",
        [acme["view"], ent, f"public.{src}"],
        states=("42710",),
    )
    assert "another tenant" in str(e)
    # another tenant's entity cannot be used
    refused(
        g,
        "select features.create_feature_view(%s, %s, %s, 'ts', '[{\"name\": \"x\"}]')",
        [uniq("gx_view"), acme["entity"], f"public.{src}"],
        states=("42704",),
    )


def test_naming_another_tenant_or_having_no_rights_gets_nothing(connect_as, acme):
    view = acme["view"]
    g = connect_as("globex_app")
    g.execute("set indb.tenant = 'acme'")
    refused(g, "select features.get_online(array[%s], '{\"k\": 1}')", [f"{view}:x"])
    refused(connect_as("norights"), "select features.get_online(array[%s], '{\"k\": 1}')", [f"{view}:x"])
    refused(connect_as("norights"), f"select count(*) from {acme['offline']}")
