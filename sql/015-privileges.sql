-- Privileges: the policy that 999-grants.sql applies at install, as functions, so that the functions that
-- create tables at run time (collections, feature stores, vectorizer destinations) give them exactly the
-- same grants. The policy itself is described at the top of 999-grants.sql and in SECURITY.md.

create or replace function ml._grant_policy() returns jsonb
language sql immutable parallel safe
as $$ select jsonb_build_object(
  'APP', jsonb_build_array(
    'ml.version', 'ml.embed', 'ml.search', 'ml.keyword_search', 'ml.hybrid_search', 'ml.warmup',
    'ml.predict', 'ml.predict_proba', 'ml.predict_batch', 'ml.vectorizer_search',
    'features.get_online', 'features.get_online_batch',
    'ml.caller', 'ml.current_tenant', 'ml.is_admin', 'ml.tenants_of'),
  'READ_VERBS', '^(get_|list_|search|describe|explain|evaluate|show_|lineage|runtime_info|metric_history|node_label|collection_health|drift|check_skew|feature_importance|historical_query|training_set$|compare_)',
  'ADMIN_ONLY', jsonb_build_array(
    'ml.create_tenant', 'ml.register_embedding_model', 'features.create_on_demand_feature',
    'audit.apply_retention', 'audit.ensure_partitions', 'ml.add_shard', 'ml.remove_shard'),
  'AUDIT_READ', jsonb_build_array('audit.verify', 'audit.head', 'audit.seal'),
  'DEFINER_APP', jsonb_build_array('ml._serving_model', 'ml._model_artifact', 'ml._log_prediction',
                                   'ml._shard_search', 'ml._shard_keyword_search', 'ml._runtime_venv'),
  'DEFINER_NOBODY', jsonb_build_array('features._create_offline_table', 'ml._search_static_set'),
  -- trigger functions that writers attach to tables of their own (ml.create_vectorizer runs as its caller and
  -- makes the triggers on the caller's source table, which needs EXECUTE); each checks that the table it
  -- fires on is the one its catalog row names, so attaching it elsewhere does nothing
  'TRIGGER_ATTACH', jsonb_build_array('ml._vectorizer_trigger'),
  'APP_TABLES', jsonb_build_array(
    'ml.embedding_models', 'ml.collections', 'ml.collection_stats', 'ml.collection_terms', 'ml.vectorizers',
    'ml.bm25_docs', 'ml.bm25_postings', 'ml.bm25_delta', 'ml.bm25_deleted',
    'features.entities', 'features.feature_views', 'features.on_demand_features', 'features.online_store'),
  'DATA_TABLES', jsonb_build_array('features.online_store', 'registry.prediction_log'),
  'APPEND_ONLY', jsonb_build_array('registry.prediction_log'))
$$;
comment on function ml._grant_policy() is 'internal: the lists 999-grants.sql applies (see the comment at the top of that file)';

-- tables (and views) of the indb schemas; partitions get nothing
create or replace function ml._table_grants(rel regclass) returns text[]
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  pol jsonb := ml._grant_policy();
  c record;
  name text;
  is_data boolean;
  want text[] := '{}';
begin
  select n.nspname, k.relname, k.relispartition into c
    from pg_class k join pg_namespace n on n.oid = k.relnamespace where k.oid = rel;
  if c.relispartition then
    return '{}';
  end if;
  name := c.nspname || '.' || c.relname;
  if c.nspname = 'audit' then
    return array['indb_admin:SELECT'];
  end if;
  if name in ('ml.installs', 'ml.alembic_version') then
    return array['indb_reader:SELECT'];
  end if;
  is_data := c.nspname in ('collections', 'embeddings') or pol -> 'DATA_TABLES' ? name
             or (c.nspname = 'features' and c.relname ~ '^fv_[0-9]+_offline$');
  want := array['indb_reader:SELECT'];
  if pol -> 'APP_TABLES' ? name or c.nspname in ('collections', 'embeddings') then
    want := want || 'indb_app:SELECT'::text;
  end if;
  if is_data and not (pol -> 'APPEND_ONLY' ? name) then
    want := want || array['indb_writer:INSERT', 'indb_writer:UPDATE', 'indb_writer:DELETE'];
  end if;
  return want;
end $$;
comment on function ml._table_grants(regclass) is 'internal: the grants a table of indb gets (see 999-grants.sql)';

create or replace function ml._apply_table_grants(rel regclass) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  want text[] := ml._table_grants(rel);
  g text;
begin
  -- change the ACL only when it differs (every GRANT/REVOKE is an audit event)
  if (select coalesce(array_agg(x order by x), '{}') from (
        select case when a.grantee = 0 then 'PUBLIC' else a.grantee::regrole::text end || ':' || a.privilege_type as x
          from pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
         where c.oid = rel and a.grantee <> c.relowner) y)
     is not distinct from (select coalesce(array_agg(w order by w), '{}') from unnest(want) w) then
    return;
  end if;
  execute format('revoke all on %s from public, indb_app, indb_reader, indb_writer, indb_admin', rel);
  foreach g in array want loop
    execute format('grant %s on %s to %I', split_part(g, ':', 2), rel, split_part(g, ':', 1));
  end loop;
end $$;
comment on function ml._apply_table_grants(regclass) is
  'internal: give a table of indb exactly its grants; called here and by the functions that create tables';
