"""Schema install by migrations: fresh install == upgrade from the first revision; reinstall is a no-op;
a failing install leaves nothing behind; the runtime is reachable from inside the server."""

from __future__ import annotations

import re
import subprocess
import sys

import psycopg
import pytest
from helpers import one_row

from indb.install import head_revision, install
from indb.localdb import PG_BIN


def schema_snapshot(dsn: str) -> str:
    """pg_dump --schema-only of the indb schemas, normalized (no comments with db names, no blank runs)."""
    r = subprocess.run(
        [
            str(PG_BIN / "pg_dump"),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "-n",
            "ml",
            "-n",
            "registry",
            "-n",
            "audit",
            "-n",
            "features",
            "-d",
            dsn,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [
        line
        for line in r.stdout.splitlines()
        if line
        and not line.startswith(("--", "SET ", "\\restrict", "\\unrestrict"))
        and "pg_catalog.set_config('search_path'" not in line
    ]
    return "\n".join(lines)


def test_upgrade_from_first_revision_equals_fresh_install(empty_db):
    fresh, upgraded = empty_db("indb_fresh"), empty_db("indb_upgraded")
    install(fresh, venv=sys.prefix)
    first = install(upgraded, venv=sys.prefix, target="0001", apply_sql=False)
    assert first["to"] == "0001"
    second = install(upgraded, venv=sys.prefix)
    assert second["from"] == "0001" and second["to"] == head_revision()
    a, b = schema_snapshot(fresh), schema_snapshot(upgraded)
    assert "CREATE TABLE registry.runs" in a
    assert a == b


def test_reinstall_is_idempotent_and_keeps_data(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("insert into registry.experiments(name) values ('keep-me') on conflict do nothing")
    again = install(db_dsn, venv=sys.prefix)
    assert again["from"] == again["to"] == head_revision()
    with psycopg.connect(db_dsn) as c:
        assert c.execute("select count(*) from registry.experiments where name = 'keep-me'").fetchone()[0] == 1
        assert c.execute("select count(*) from ml.installs").fetchone()[0] >= 2


def test_failed_install_rolls_back_everything(empty_db, tmp_path, monkeypatch):
    """A broken sql/ file makes the whole install fail: no schema, no alembic version, no half state."""
    import indb.install as inst

    dsn = empty_db("indb_broken")
    good = inst.sql_files()
    broken = tmp_path / "999-broken.sql"
    broken.write_text("create function ml.broken() returns int language sql as $$ select no_such_column $$;")
    monkeypatch.setattr(inst, "sql_files", lambda: [*good, broken])
    with pytest.raises(inst.InstallError, match="999-broken.sql"):
        inst.install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn) as c:
        assert (
            c.execute(
                "select count(*) from pg_namespace where nspname in ('ml','registry','audit','features')"
            ).fetchone()[0]
            == 0
        )
        assert c.execute("select count(*) from pg_extension where extname = 'vector'").fetchone()[0] == 0


def test_install_without_the_c_library_says_how_to_build_it_and_changes_nothing(empty_db, monkeypatch):
    """A server without indb_audit.so (a fresh server where `make c-functions` did not run): the install fails
    with 58P01 and the command that builds it, and leaves no half state."""
    import indb.install as inst

    dsn = empty_db("indb_no_c")
    render = inst.render_sql
    monkeypatch.setattr(inst, "C_LIBRARY", "indb_audit_not_built")
    monkeypatch.setattr(
        inst,
        "render_sql",
        lambda p, vs="public": render(p, vs).replace("'$libdir/indb_audit'", "'$libdir/indb_audit_not_built'"),
    )
    with pytest.raises(inst.InstallError, match="indb_audit_not_built.so is not in this server's library") as ei:
        inst.install(dsn, venv=sys.prefix)
    assert ei.value.sqlstate == "58P01"
    assert "make c-functions" in ei.value.hint
    with psycopg.connect(dsn) as c:
        assert c.execute("select to_regnamespace('audit') is null").fetchone()[0]


def test_install_refuses_a_venv_the_server_cannot_use(empty_db):
    dsn = empty_db("indb_badvenv")
    with pytest.raises(inst_error(), match="cannot load the indb runtime") as ei:
        install(dsn, venv="/nonexistent/venv")
    assert "--venv" in str(ei.value)
    with psycopg.connect(dsn) as c:
        assert c.execute("select to_regnamespace('ml') is null").fetchone()[0]


def inst_error():
    from indb.errors import InstallError

    return InstallError


def test_runtime_info_from_sql(sconn):
    info = sconn.execute("select ml.runtime_info()").fetchone()[0]
    assert info["python"].startswith("3.11")
    assert info["venv"] == sys.prefix
    assert info["device"] in ("cpu", "cuda")
    assert info["packages"]["torch"].startswith("2.13.0")
    assert info["env"]["OMP_WAIT_POLICY"] == "PASSIVE" and info["env"]["HF_HUB_OFFLINE"] == "1"
    assert info["torch_threads"] >= 1
    assert sconn.execute("select ml.version()").fetchone()[0] == info["indb_runtime"]


def test_warmup_loads_the_default_model_once(conn):
    conn.execute("set indb.runtime = 'backend'")  # in this backend (the shared service: tests/runtime)
    first = one_row(conn, "select * from ml.warmup()")
    assert first["model"] == "all-MiniLM-L6-v2"
    info = conn.execute("select ml.runtime_info()").fetchone()[0]
    assert "all-MiniLM-L6-v2" in info["loaded_models"]
    assert {"torch", "sentence_transformers", "xgboost"} <= set(info["imported"])
    second = one_row(conn, "select * from ml.warmup()")
    assert second["total_s"] < 1.0, "second warm-up in the same backend must reuse the loaded model"


def test_embedding_inside_the_database_is_real(sconn):
    row = sconn.execute(
        "select vector_dims(ml.embed('all-MiniLM-L6-v2', 'a cat sat on the mat')), "
        "       ml.embed('all-MiniLM-L6-v2', 'a cat sat on the mat') <=> ml.embed('all-MiniLM-L6-v2', 'a kitten rested on a rug'), "
        "       ml.embed('all-MiniLM-L6-v2', 'a cat sat on the mat') <=> ml.embed('all-MiniLM-L6-v2', 'quarterly tax filing deadline')"
    ).fetchone()
    assert row[0] == 384
    assert row[1] < row[2], "a paraphrase must be closer than unrelated text"


def test_pg_cron_is_preloaded_in_the_cluster(sconn):
    assert re.search(r"\bpg_cron\b", sconn.execute("show shared_preload_libraries").fetchone()[0])


def test_runtime_info_and_install_report_the_pgvector_version(sconn, db_dsn):
    """ml.runtime_info() names the vector extension's version; a reinstall on a current database leaves it."""
    ext, default = sconn.execute(
        "select e.extversion, a.default_version from pg_extension e "
        "join pg_available_extensions a on a.name = e.extname where e.extname = 'vector'"
    ).fetchone()
    assert sconn.execute("select ml.runtime_info()->>'pgvector'").fetchone()[0] == ext
    summary = install(db_dsn, venv=sys.prefix)
    assert summary["pgvector"] == {"from": default, "to": default}


def test_install_updates_an_older_pgvector_keeping_data_and_index(empty_db):
    """A database made on an older pgvector (the extension's SQL at that version, data and an HNSW index in
    it) is brought to the server's pgvector by `indb install` (ALTER EXTENSION vector UPDATE); the rows and
    the index answers are unchanged."""
    dsn = empty_db("indb_vecupd")
    with psycopg.connect(dsn, autocommit=True) as c:
        default = c.execute("select default_version from pg_available_extensions where name = 'vector'").fetchone()[0]
        older = [
            r[0]
            for r in c.execute(
                "select version from pg_available_extension_versions where name = 'vector' and version <> %s",
                [default],
            ).fetchall()
        ]
        older = [v for v in older if v.startswith("0.8.")]  # a base script of an older 0.8.x release
        if not older:
            pytest.skip(
                f"only pgvector {default} is installed on this server (no older vector--0.8.x.sql to start from); "
                "docker/install-system.sh keeps the old scripts when it upgrades"
            )
        start = sorted(older, key=lambda v: tuple(int(x) for x in v.split(".")))[0]
        c.execute(f"create extension vector version '{start}'")
        c.execute("create table t(id int primary key, v vector(3))")
        c.execute("insert into t select i, array[i % 7, i % 11, i % 13]::vector from generate_series(1, 500) i")
        c.execute("create index on t using hnsw (v vector_l2_ops)")
        c.execute("set enable_seqscan = off")
        q = "select id from t order by v <-> '[3,5,7]' limit 5"
        before = [r[0] for r in c.execute(q).fetchall()]
    summary = install(dsn, venv=sys.prefix)
    assert summary["pgvector"] == {"from": start, "to": default}
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select extversion from pg_extension where extname = 'vector'").fetchone()[0] == default
        assert c.execute("select count(*) from t").fetchone()[0] == 500
        c.execute("set enable_seqscan = off")
        assert [r[0] for r in c.execute(q).fetchall()] == before


def test_upgrade_rebuilds_collection_metadata_indexes_with_the_leakproof_opclass(empty_db):
    """A collection made before migration 0024 has a metadata index of PostgreSQL's jsonb_ops, which row security
    keeps out of a tenant's reach; upgrading rebuilds it (same name) with ml.jsonb_tenant_path_ops, rows unchanged."""
    dsn = empty_db("indb_mdidx")
    install(dsn, venv=sys.prefix)
    opclass = (
        "select oc.opcname from pg_index i join pg_class ic on ic.oid = i.indexrelid "
        "join pg_opclass oc on oc.oid = i.indclass[0] where ic.relname = 'old_docs_metadata'"
    )
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select ml.create_collection('old_docs', model => null, options => '{\"dimensions\": 2}')")
        c.execute(
            "select ml.add_documents('old_docs', (select jsonb_agg(jsonb_build_object('id', i::text, "
            "'embedding', array[1, i], 'metadata', jsonb_build_object('cat', i % 10))) from generate_series(1, 200) i))"
        )
        # the index as 0.2.0 made it, and the schema one revision back
        c.execute("drop index collections.old_docs_metadata")
        c.execute("create index old_docs_metadata on collections.old_docs using gin (metadata)")
        c.execute("update ml.alembic_version set version_num = '0023'")
        assert c.execute(opclass).fetchone()[0] == "jsonb_ops"
    summary = install(dsn, venv=sys.prefix)
    assert summary["from"] == "0023" and summary["to"] == head_revision()
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute(opclass).fetchone()[0] == "jsonb_tenant_path_ops"
        got = c.execute("select count(*) from ml.search('old_docs', '[1,0]'::vector, 100, '{\"cat\": 3}')").fetchone()
        assert got[0] == 20
