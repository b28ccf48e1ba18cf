"""Load the seeded point-in-time data (benchmarks/_pit_data.py) into an indb database with COPY, and write the
same rows as parquet for the pandas and DuckDB sides."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd

from ._pit_data import VIEWS


def _csv(df: pd.DataFrame, path: Path) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    con.register("df", df)
    con.execute(f"copy (select * from df) to '{path}' (header false, timestampformat '%Y-%m-%d %H:%M:%S+00')")
    con.close()
    os.chmod(path, 0o644)


def load(conn, ent: pd.DataFrame, views: dict[str, pd.DataFrame], tmp: Path) -> dict:
    """Entities, views (empty sources), offline stores filled by server-side COPY (the same rows, written_at
    included, so late rows stay late), the entity table pit_ent; parquet files for the other sides."""
    os.chmod(tmp, 0o755)
    out = {"copy_s": {}}
    conn.execute("select features.create_entity('pit_user', array['user_id'])")
    conn.execute("select features.create_entity('pit_item', array['item_id'])")
    conn.execute("select features.create_entity('pit_user_item', array['user_id', 'item_id'])")
    entity = {("user_id",): "pit_user", ("item_id",): "pit_item", ("user_id", "item_id"): "pit_user_item"}
    for name, keys, ttl, _share, feats in VIEWS:
        cols = ", ".join(
            [f"{k} {'bigint' if k == 'user_id' else 'text'}" for k in keys]
            + ["ts timestamptz"]
            + [f"{f} {'int' if t == 'int' else 'float8'}" for f, t in feats]
        )
        conn.execute(f"create table {name}_src ({cols})")
        spec = json.dumps([{"name": f, "type": "int" if t == "int" else "float8"} for f, t in feats])
        conn.execute(
            "select features.create_feature_view(%s, %s, %s, 'ts', %s, ttl => %s::interval, partition_by => 'month')",
            [name, entity[tuple(keys)], f"{name}_src", spec, ttl],
        )
        vid, off = conn.execute(
            "select id, offline_table from features.feature_views where name = %s", [name]
        ).fetchone()
        conn.execute("select features._ensure_partitions(%s, '2023-12-01', '2025-02-01')", [vid])
        df = views[name]
        path = tmp / f"{name}.csv"
        _csv(df, path)
        t0 = time.perf_counter()
        conn.execute(f"copy {off} ({', '.join(df.columns)}) from '{path}' with (format csv)")
        out["copy_s"][name] = time.perf_counter() - t0
        path.unlink()
        df.to_parquet(tmp / f"{name}.parquet")
    conn.execute(
        "create table pit_ent (row_id bigint primary key, user_id bigint, item_id text, event_timestamp timestamptz,"
        " label int)"
    )
    path = tmp / "ent.csv"
    _csv(ent, path)
    t0 = time.perf_counter()
    conn.execute(f"copy pit_ent from '{path}' with (format csv)")
    out["copy_s"]["entity"] = time.perf_counter() - t0
    path.unlink()
    ent.to_parquet(tmp / "ent.parquet")
    conn.execute("vacuum analyze")
    conn.execute("checkpoint")  # the load's dirty pages written now, not during the first timed join
    return out
