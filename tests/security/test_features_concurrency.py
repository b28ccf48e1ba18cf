"""Concurrent writers of one feature view (issue 10, item 8): the first materializations of a view used to
deadlock creating its partitions before they took the view's lock. Now every materialization takes the lock
first, and pushes create missing partitions under it."""

from __future__ import annotations

import json
import secrets
import threading
from datetime import UTC, datetime, timedelta

import psycopg
from helpers import login_name


def run_together(connect_as, who: str, n: int, work) -> list:
    """Run work(conn, i) in n sessions of login ``who`` at the same moment; the results (or exceptions)."""
    conns = [connect_as(who) for _ in range(n)]
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def go(i: int) -> None:
        barrier.wait()
        try:
            out[i] = work(conns[i], i)
        except Exception as e:  # collected and asserted by the caller
            out[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_first_materializations_of_a_view_do_not_deadlock(sconn, connect_as):
    src = f"conc_src_{secrets.token_hex(3)}"
    sconn.execute(f"create table public.{src} (k int, ts timestamptz, x float8)")
    sconn.execute(
        f"insert into public.{src} select g % 50, timestamptz '2024-01-01' + g * interval '1 hour', g "
        "from generate_series(0, 24 * 60) g"
    )
    sconn.execute(f'grant select on public.{src} to "{login_name("writer")}"')
    w = connect_as("writer")
    ent, view = f"conc_ent_{secrets.token_hex(3)}", f"conc_view_{secrets.token_hex(3)}"
    w.execute("select features.create_entity(%s, array['k'])", [ent])
    w.execute(
        "select features.create_feature_view(%s, %s, %s, 'ts', '[{\"name\": \"x\"}]', partition_by => 'day')",
        [view, ent, f"public.{src}"],
    )
    out = run_together(
        connect_as,
        "writer",
        3,
        lambda c, i: c.execute(
            "select to_jsonb(r) from features.materialize(%s, '2023-12-01', '2024-04-01') r", [view]
        ).fetchone()[0],
    )
    assert all(isinstance(r, dict) for r in out), out
    assert [r["rows_written"] for r in out] == [1441] * 3
    vid = sconn.execute("select id from features.feature_views where name = %s", [view]).fetchone()[0]
    assert sconn.execute(f"select count(*) from features.fv_{vid}_offline").fetchone()[0] == 1441
    assert (
        sconn.execute(
            "select count(*) from pg_inherits where inhparent = %s::regclass", [f"features.fv_{vid}_offline"]
        ).fetchone()[0]
        == 61
    )


def test_concurrent_pushes_into_new_partitions(sconn, connect_as):
    src = f"conc_psrc_{secrets.token_hex(3)}"
    sconn.execute(f"create table public.{src} (k int, ts timestamptz, x float8)")
    sconn.execute(f'grant select on public.{src} to "{login_name("writer")}"')
    w = connect_as("writer")
    ent, view = f"conc_pent_{secrets.token_hex(3)}", f"conc_pview_{secrets.token_hex(3)}"
    w.execute("select features.create_entity(%s, array['k'])", [ent])
    w.execute(
        "select features.create_feature_view(%s, %s, %s, 'ts', '[{\"name\": \"x\"}]', partition_by => 'day')",
        [view, ent, f"public.{src}"],
    )
    t0 = datetime(2025, 3, 1, tzinfo=UTC)

    def push(c: psycopg.Connection, i: int) -> dict:
        rows = [{"k": i * 100 + d, "ts": (t0 + timedelta(days=d, hours=i)).isoformat(), "x": d} for d in range(20)]
        return c.execute("select to_jsonb(r) from features.push(%s, %s) r", [view, json.dumps(rows)]).fetchone()[0]

    out = run_together(connect_as, "writer", 3, push)
    assert all(isinstance(r, dict) for r in out), out
    assert sum(r["rows_written"] for r in out) == 60


def test_a_materialization_and_pushes_at_once(sconn, connect_as):
    src = f"conc_msrc_{secrets.token_hex(3)}"
    sconn.execute(f"create table public.{src} (k int, ts timestamptz, x float8)")
    sconn.execute(
        f"insert into public.{src} select g % 10, timestamptz '2025-06-01' + g * interval '1 hour', g "
        "from generate_series(0, 24 * 30) g"
    )
    sconn.execute(f'grant select on public.{src} to "{login_name("writer")}"')
    w = connect_as("writer")
    ent, view = f"conc_ment_{secrets.token_hex(3)}", f"conc_mview_{secrets.token_hex(3)}"
    w.execute("select features.create_entity(%s, array['k'])", [ent])
    w.execute(
        "select features.create_feature_view(%s, %s, %s, 'ts', '[{\"name\": \"x\"}]', partition_by => 'day')",
        [view, ent, f"public.{src}"],
    )
    t0 = datetime(2025, 6, 1, tzinfo=UTC)

    def work(c: psycopg.Connection, i: int) -> dict:
        if i == 0:
            return c.execute(
                "select to_jsonb(r) from features.materialize(%s, '2025-05-01', '2025-08-01') r", [view]
            ).fetchone()[0]
        rows = [{"k": 100 + i, "ts": (t0 + timedelta(days=d, minutes=i)).isoformat(), "x": d} for d in range(40)]
        return c.execute("select to_jsonb(r) from features.push(%s, %s) r", [view, json.dumps(rows)]).fetchone()[0]

    out = run_together(connect_as, "writer", 3, work)
    assert all(isinstance(r, dict) for r in out), out
    assert out[0]["rows_written"] == 721 and out[1]["rows_written"] == out[2]["rows_written"] == 40
