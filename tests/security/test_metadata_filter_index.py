"""Metadata filters under row security (migration 0024): equality and $in on metadata use ml.@> ($exists ml.?),
PostgreSQL's own containment (and key test) declared LEAKPROOF, so that a tenant's application login keeps the
collection's GIN index instead of reading every row it may see. Attacked here: the answers stay the caller's own
and shared rows through ml.search, ml.keyword_search (ml.hybrid_search runs both) and plain SELECT; the plan as that login
is an index scan; a filter value nested deep enough to make containment recurse far is refused."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from psycopg.types.json import Jsonb

N_PER_TENANT = 1500


@pytest.fixture
def filtered_collection(sconn):
    """acme, globex and shared rows (1,500 each); "cat" takes 100 values, "rare" marks 3 rows of each owner."""
    name = f"mf_{secrets.token_hex(3)}"
    sconn.execute(
        "select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')",
        [name],
    )
    docs = [
        {
            "id": f"{t or 'shared'}_{i}",
            "tenant": t,
            "content": f"document {i} about {'bone density' if i % 7 == 0 else 'vitamins'}",
            "embedding": [1, 0.001 * i],
            "metadata": {"cat": i % 100, **({"rare": True} if i < 3 else {})},
        }
        for t in ("acme", "globex", None)
        for i in range(N_PER_TENANT)
    ]
    sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb(docs)])
    sconn.execute(f"analyze collections.{name}")
    return name


def _ids(conn, sql, params):
    return sorted(r[0] for r in conn.execute(sql, params))


@pytest.mark.parametrize("who", ["acme_app", "globex_app"])
def test_metadata_filters_keep_the_index_and_the_tenants_rows(connect_as, sconn, filtered_collection, who):
    c = connect_as(who)
    tenant = who.split("_")[0]
    other = "globex" if tenant == "acme" else "acme"
    mine = {f"{tenant}_{i}" for i in range(N_PER_TENANT)} | {f"shared_{i}" for i in range(N_PER_TENANT)}
    for flt, want in (
        ({"cat": 5}, {x for x in mine if int(x.split("_")[1]) % 100 == 5}),
        ({"rare": True}, {x for x in mine if int(x.split("_")[1]) < 3}),
        ({"cat": {"$in": [5, 6]}}, {x for x in mine if int(x.split("_")[1]) % 100 in (5, 6)}),
        ({"rare": {"$exists": True}}, {x for x in mine if int(x.split("_")[1]) < 3}),
    ):
        got = _ids(c, "select id from ml.search(%s, '[1,0]'::vector, 100, %s)", [filtered_collection, Jsonb(flt)])
        assert set(got) == want, flt
        assert not any(x.startswith(other) for x in got)
        # plain SQL with the leakproof operator: the policy still decides what comes back
        plain = _ids(
            c,
            f"select id from collections.{filtered_collection} where metadata operator(ml.@>) %s",
            [Jsonb({"rare": True})],
        )
        assert set(plain) == {x for x in mine if int(x.split("_")[1]) < 3}
    kw = _ids(
        c,
        "select id from ml.keyword_search(%s, 'bone density', 100, %s)",
        [filtered_collection, Jsonb({"cat": 14})],
    )
    assert kw and set(kw) == {x for x in mine if int(x.split("_")[1]) % 100 == 14 and int(x.split("_")[1]) % 7 == 0}


def test_the_plan_of_a_tenants_filtered_search_reads_the_metadata_index(connect_as, filtered_collection):
    c = connect_as("acme_reader")  # ml.search_explain is a reader's; row security applies to it as to the app
    # on this small table a scan may cost less; with scans priced out, only a leakproof condition reaches the index
    # (with PostgreSQL's own @>, the plan stays a Seq Scan: the policy must be checked first)
    c.execute("set enable_seqscan = off")
    strategy, plan = c.execute(
        "select strategy, plan from ml.search_explain(%s, '[1,0]'::vector, 10, %s)",
        [filtered_collection, Jsonb({"cat": 5})],
    ).fetchone()
    assert strategy == "exact"
    assert f"Bitmap Index Scan on {filtered_collection}_metadata" in plan, plan
    assert "Seq Scan" not in plan, plan
    # the index belongs to the leakproof operator class
    opclass = c.execute(
        "select oc.opcname from pg_index i join pg_class ic on ic.oid = i.indexrelid "
        "join pg_opclass oc on oc.oid = i.indclass[0] where ic.relname = %s",
        [f"{filtered_collection}_metadata"],
    ).fetchone()[0]
    assert opclass == "jsonb_tenant_path_ops"


def test_a_deeply_nested_filter_value_is_refused(connect_as, filtered_collection):
    c = connect_as("acme_app")
    value: object = 1
    for _ in range(17):
        value = {"x": value}
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="nested more than 16 levels"):
        c.execute("select * from ml.search(%s, '[1,0]'::vector, 10, %s)", [filtered_collection, Jsonb({"a": value})])
    # deeper than Python's recursion limit: bad input (54001), not "a bug in indb", and nothing else runs
    deep = '{"a": ' + '{"x": ' * 3000 + "1" + "}" * 3000 + "}"
    with pytest.raises(psycopg.errors.StatementTooComplex, match="nested too deeply") as e:
        c.execute("select * from ml.search(%s, '[1,0]'::vector, 10, %s::jsonb)", [filtered_collection, deep])
    assert "bug" not in (e.value.diag.message_hint or "")


def test_the_leakproof_operators_answer_as_postgresqls_own(sconn):
    """ml.@> and ml.? are PostgreSQL's jsonb_contains and jsonb_exists: the same answer on every pair below."""
    values = ['{"a": 1}', '{"a": [1, 2]}', '{"a": {"b": null}}', "[1, 2, [3]]", '"a"', "1", "null", "{}", "[]"]
    wrong = sconn.execute(
        "select count(*) from unnest(%s::jsonb[]) x, unnest(%s::jsonb[]) y "
        "where (x operator(ml.@>) y) is distinct from (x @> y) "
        "or (x operator(ml.?) 'a') is distinct from (x ? 'a')",
        [values, values],
    ).fetchone()[0]
    assert wrong == 0


def test_registry_param_and_tag_conditions_reach_their_indexes_under_row_security(connect_as, sconn):
    """registry.search_runs' "params.x = 'y'" and "tags.x = 'y'" are containment on registry.run_search (and
    registry.runs' tags): with ml.@> a tenant's reader keeps their GIN indexes and still sees only its runs."""
    exp = f"mf_runs_{secrets.token_hex(3)}"
    c = connect_as("acme_writer")
    c.execute("select registry.create_experiment(%s)", [exp])
    for i in range(3):
        run = c.execute("select registry.start_run(%s)", [exp]).fetchone()[0]
        c.execute("select registry.log_param(%s, 'lr', %s)", [run, str(i)])
        c.execute("select registry.set_tag(%s, 'team', %s)", [run, "a" if i else "b"])
        c.execute("select registry.end_run(%s)", [run])
    r = connect_as("acme_reader")
    r.execute("set enable_seqscan = off")
    for sql, index in (
        (
            'select run_id from registry.run_search s where s.params operator(ml.@>) \'{"lr": "1"}\'',
            "run_search_params_tags_idx",
        ),
        ('select id from registry.runs r where r.tags operator(ml.@>) \'{"team": "a"}\'', "runs_tags_idx"),
    ):
        plan = "\n".join(x[0] for x in r.execute("explain (costs off) " + sql))
        assert f"Bitmap Index Scan on {index}" in plan, plan
    got = r.execute(
        "select count(*) from registry.search_runs(array[%s], %s)", [exp, "params.lr = '1' and tags.team = 'a'"]
    ).fetchone()[0]
    assert got == 1
    assert (
        connect_as("globex_reader")
        .execute(
            'select count(*) from registry.run_search s where s.params operator(ml.@>) \'{"lr": "1"}\' '
            "and s.experiment_id = (select id from registry.experiments where name = %s)",
            [exp],
        )
        .fetchone()[0]
        == 0
    )
