"""The feature store under attack by its own users (issue 10, items 3, 7 and 8 of the feature store).

* On-demand features are code: only an admin registers one, its compiled function belongs to indb_owner, and
  a changed catalog row (even a superuser's UPDATE) cannot make a caller of get_online run another function.
* A view's source and feature expressions are its author's code: they run only for the author, or for anyone
  when the author is an admin. An admin (or a superuser) materializing a writer's view would run the writer's
  SQL with the admin's rights: refused.
* Catalogs are written by indb's functions only; the documented roles can do the documented work.
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


def refused(conn, sql, params=None, state: str = "42501") -> psycopg.Error:
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql, params)
    assert ei.value.sqlstate == state, (sql, ei.value.sqlstate, str(ei.value))
    return ei.value


def source_table(sconn, name: str, *grantees: str) -> str:
    """A source table (owned by the superuser) readable by the given logins: 4 entities over 3 days."""
    sconn.execute(f"create table public.{name} (k int, ts timestamptz, x float8)")
    sconn.execute(
        f"insert into public.{name} select g % 4, timestamptz '2024-01-01' + g * interval '6 hours', g "
        "from generate_series(0, 11) g"
    )
    for g in grantees:
        sconn.execute(f'grant select on public.{name} to "{login_name(g)}"')
    return f"public.{name}"


@pytest.fixture(scope="module")
def admin_view(sconn, logins):
    """An admin's shared view, materialized, and an admin's on-demand feature over it."""
    import psycopg as pg

    src = source_table(sconn, uniq("sec_fs_admin_src"), "admin")
    view, ent, odf = uniq("adm_view"), uniq("adm_ent"), uniq("adm_odf")
    with pg.connect(logins["admin"], autocommit=True) as a:
        a.execute("select features.create_entity(%s, array['k'])", [ent])
        a.execute("select features.create_feature_view(%s, %s, %s, 'ts', '[{\"name\": \"x\"}]')", [view, ent, src])
        a.execute("select * from features.materialize(%s, '2023-12-01', '2024-02-01')", [view])
        a.execute("select features.create_on_demand_feature(%s, 'x * 2', 'float8', array[%s])", [odf, f"{view}:x"])
    return {"view": view, "entity": ent, "odf": odf, "source": src}


def test_a_tampered_on_demand_row_does_not_make_get_online_run_another_function(sconn, connect_as, admin_view):
    app = connect_as("app")
    odf = admin_view["odf"]
    got = one(app, "select features.get_online(array[%s], '{\"k\": 1}')", [odf])
    assert got[odf] == 18.0 and got["_status"][odf] == "present"
    fn = one(sconn, "select function_name from features.on_demand_features where name = %s", [odf])
    owner = one(sconn, "select proowner::regrole::text from pg_proc where oid = %s::regprocedure", [fn])
    assert owner == "indb_owner"
    # the grants of an internal helper (what `indb install` gives it again): indb_app and up, not PUBLIC
    acl = one(
        sconn,
        "select array_agg(a.grantee::regrole::text) from pg_proc p, aclexplode(p.proacl) a "
        "where p.oid = %s::regprocedure and a.grantee <> p.proowner",
        [fn],
    )
    assert acl == ["indb_app"]
    # someone who can change the catalog (only a superuser can now) points the row at its own function
    pwn = uniq("pwn_od")
    sconn.execute(f"create function public.{pwn}(jsonb, jsonb) returns text language sql as $$ select 'pwned' $$")
    sconn.execute(f"grant execute on function public.{pwn}(jsonb, jsonb) to public")
    try:
        for tampered in (f"public.{pwn}", f"public.{pwn}(jsonb, jsonb)"):
            sconn.execute("update features.on_demand_features set function_name = %s where name = %s", [tampered, odf])
            e = refused(app, "select features.get_online(array[%s], '{\"k\": 1}')", [odf])
            assert "compiled function" in str(e) and e.diag.message_hint
            refused(
                app,
                'select features.get_online_batch(array[%s], \'[{"k": 1}, {"k": 2}]\')',
                [odf],
            )
            refused(
                connect_as("reader"),
                "select features.get_historical('select 1 as k, now() as event_timestamp', array[%s])",
                [odf],
            )
        # another on-demand feature's function is not this one's either
        other = uniq("adm_odf2")
        a = connect_as("admin")
        a.execute(
            "select features.create_on_demand_feature(%s, 'x + 1', 'float8', array[%s])",
            [other, f"{admin_view['view']}:x"],
        )
        other_fn = one(sconn, "select function_name from features.on_demand_features where name = %s", [other])
        sconn.execute("update features.on_demand_features set function_name = %s where name = %s", [other_fn, odf])
        refused(app, "select features.get_online(array[%s], '{\"k\": 1}')", [odf])
    finally:
        sconn.execute("update features.on_demand_features set function_name = %s where name = %s", [fn, odf])
    assert one(app, "select features.get_online(array[%s], '{\"k\": 1}')", [odf])[odf] == 18.0


def test_only_admins_register_on_demand_features_and_nobody_writes_the_catalog(connect_as, admin_view):
    view = admin_view["view"]
    for who in ("writer", "acme_writer", "reader", "app"):
        c = connect_as(who)
        refused(c, "select features.create_on_demand_feature('w_odf', 'x', 'float8', array[%s])", [f"{view}:x"])
        # the definer behind it checks the caller too
        refused(
            c,
            "select features._register_on_demand('w_odf', 'x', 'float8', array[%s], '{}', null)",
            [f"{view}:x"],
        )
    w = connect_as("writer")
    for sql in (
        "update features.on_demand_features set function_name = 'public.x(jsonb,jsonb)'",
        "update features.feature_views set source_sql = 'select 1'",
        "insert into features.entities (name, join_keys) values ('w_ent', array['k'])",
        "delete from features.materialization_runs",
        "update features.statistics set stats = '{}'",
        "delete from features.quarantine",
    ):
        refused(w, sql)


def test_on_demand_expressions_cannot_reach_the_ddl_or_write(connect_as, admin_view):
    a = connect_as("admin")
    view = admin_view["view"]
    for expr in (
        "x) from (select 1) y; create table public.odf_pwned (i int); select (1",
        "(select count(*) from features.entities) + x",  # reads are the caller's, at serve time: fine
    ):
        name = uniq("odf_inj")
        try:
            a.execute(
                "select features.create_on_demand_feature(%s, %s, 'float8', array[%s])", [name, expr, f"{view}:x"]
            )
        except psycopg.Error as e:
            assert e.sqlstate in ("42601", "42P01", "42501", "42804"), str(e)
    assert one(a, "select to_regclass('public.odf_pwned')") is None
    # straight to the definer: the expression is the body of the compiled function (a quoted literal), never a
    # piece of the DDL that creates it, and the function runs with its caller's rights, read-only
    name = uniq("odf_direct")
    inj = "1) from (select 1) y; create table public.odf_pwned (i int); select (1"
    a.execute("select features._register_on_demand(%s, %s, 'float8', array[%s], '{}', null)", [name, inj, f"{view}:x"])
    e = refused(connect_as("app"), "select features.get_online(array[%s], '{\"k\": 1}')", [name], state="0A000")
    assert "non-volatile" in str(e)
    assert one(a, "select to_regclass('public.odf_pwned')") is None


def test_an_admin_does_not_run_a_writers_source(sconn, connect_as):
    """A writer's view source runs only for the writer: materialized by an admin (or a superuser) it would
    run the writer's SQL with their rights."""
    src = source_table(sconn, uniq("sec_fs_w_src"), "writer", "admin")
    w = connect_as("writer")
    ent, view = uniq("w_ent"), uniq("w_view")
    w.execute("select features.create_entity(%s, array['k'])", [ent])
    assert (
        one(w, "select features.create_feature_view(%s, %s, %s, 'ts', '[{\"name\": \"x\"}]')", [view, ent, src])
        == f"{view}@1"
    )
    assert one(w, "select rows_written from features.materialize(%s, '2023-12-01', '2024-02-01')", [view]) == 12
    for who in ("admin",):
        e = refused(connect_as(who), "select * from features.materialize(%s, '2023-12-01', '2024-02-01')", [view])
        assert login_name("writer") in str(e) and e.diag.message_hint
        refused(connect_as(who), "select * from features.materialize_incremental(%s)", [view])
        refused(connect_as(who), "select features.check_skew(%s)", [view])
    e = refused(sconn, "select * from features.materialize(%s, '2023-12-01', '2024-02-01')", [view])
    assert "may not run" in str(e)
    refused(connect_as("reader"), "select features.check_skew(%s)", [view])
    # reading what the writer materialized is fine for everyone
    got = one(connect_as("app"), "select features.get_online(array[%s], '{\"k\": 3}')", [f"{view}:x"])
    assert got["x"] == 11.0


def test_documented_roles_do_documented_work(sconn, connect_as):
    src = source_table(sconn, uniq("sec_fs_roles_src"), "writer", "admin", "reader")
    sconn.execute(f'create schema if not exists {login_name("writer")}_ws authorization "{login_name("writer")}"')
    for who in ("admin", "writer"):
        c = connect_as(who)
        ent, view = uniq(f"{who}_ent"), uniq(f"{who}_v")
        assert one(c, "select features.create_entity(%s, array['k'])", [ent]) > 0
        assert (
            one(
                c,
                "select features.create_feature_view(%s, %s, %s, 'ts', %s, partition_by => 'day')",
                [view, ent, src, json.dumps([{"name": "x"}, {"name": "x2", "type": "float8", "expr": "x * x"}])],
            )
            == f"{view}@1"
        )
        r = one(c, "select to_jsonb(r) from features.materialize(%s, '2023-12-01', '2024-02-01') r", [view])
        assert r["rows_written"] == 12 and r["online_updated"] == 4
        r = one(
            c,
            "select to_jsonb(r) from features.push(%s, %s) r",
            [view, json.dumps([{"k": 9, "ts": "2024-01-05T00:00:00+00:00", "x": 1.5, "x2": 2.25}])],
        )
        assert r["rows_written"] == 1 and r["online_updated"] == 1
        # the offline store and its partitions belong to indb_owner, with the grants of data tables
        rel = f"features.fv_{one(sconn, 'select id from features.feature_views where name = %s', [view])}_offline"
        owners = {
            x[0]
            for x in sconn.execute(
                "select relowner::regrole::text from pg_class where oid = %s::regclass "
                "or oid in (select inhrelid from pg_inherits where inhparent = %s::regclass)",
                [rel, rel],
            )
        }
        assert owners == {"indb_owner"}
        app = connect_as("app")
        got = one(app, "select features.get_online(array[%s], '{\"k\": 9}')", [f"{view}:*"])
        assert got["x2"] == 2.25 and got["_status"] == {"x": "present", "x2": "present"}
        rows = [
            r[0]
            for r in app.execute(
                'select features.get_online_batch(array[%s], \'[{"k": 1}, {"k": 77}]\')', [f"{view}:x"]
            )
        ]
        assert [r["_status"]["x"] for r in rows] == ["present", "not_found"]
        reader = connect_as("reader")
        hist = one(
            reader,
            "select features.get_historical('select 1 as k, ''2024-02-01''::timestamptz as event_timestamp', array[%s])",
            [f"{view}:x"],
        )
        assert hist["x"] == 9.0
        refused(reader, "select * from features.materialize(%s, '2023-12-01', '2024-02-01')", [view])
        refused(app, "select features.get_historical('select 1 as k, now() as event_timestamp', array[%s])", [view])
    w = connect_as("writer")
    ts = one(
        w,
        "select to_jsonb(t) from features.create_training_set(%s, 'select 1 as k, ''2024-02-01''::timestamptz as event_timestamp', array[%s]) t",
        [f"{login_name('writer')}_ws.{uniq('ts')}", f"{view}:x"],
    )
    assert ts["rows"] == 1


def test_definer_helpers_check_their_caller(sconn, connect_as, admin_view):
    """The SECURITY DEFINER helpers behind materialize and push can be called directly by any writer: each
    checks its caller as if it were the public function."""
    view_id = one(sconn, "select id from features.feature_views where name = %s", [admin_view["view"]])
    w = connect_as("acme_writer")
    # the admin's view is shared: a tenant's writer may not write its stores, runs or partitions
    for sql in (
        "select features._start_run(%s, 'push')",
        "select features._ensure_partitions(%s, '1990-01-01', '1990-01-02')",
    ):
        e = refused(w, sql, [view_id])
        assert "shared" in str(e)
    run_id = one(connect_as("admin"), "select max(id) from features.materialization_runs where view_id = %s", [view_id])
    refused(connect_as("writer"), "select features._finish_run(%s, '{}')", [run_id])
    refused(connect_as("writer"), "select features._quarantine(%s, '[]')", [run_id])
    refused(
        connect_as("writer"),
        "select features._create_offline_table(999999, '[]', '[]', null)",
    )
