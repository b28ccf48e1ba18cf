-- Lineage: edges between datasets, feature views, training sets, runs, model versions and deployments.
-- One edge per fact, from one place: the registry's writers. Facts the registry records itself get their
-- edge from registry._lineage_trigger (a run's input, the version a run produced, a deployment); other facts
-- (a feature view version feeding a training set, a training set a snapshot was taken of) are added with
-- registry.add_lineage by the function that knows them (features.create_training_set, ml.train).

-- a short label of a lineage node: dataset name@digest, run "name STATUS run <uuid>", model/version, deployment
create or replace function registry.node_label(kind text, id text) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare out text;
begin
  if id !~ '^[0-9]+$' then return null; end if;
  case kind
    when 'dataset' then
      select d.name || '@' || left(d.digest, 12) into out from registry.datasets d where d.id = node_label.id::bigint;
    when 'run' then
      select coalesce(r.name || ' ', '') || r.status || ' run ' || r.run_uuid into out
        from registry.runs r where r.id = node_label.id::bigint;
    when 'model_version' then
      select m.name || '/' || v.version into out
        from registry.model_versions v join registry.registered_models m on m.id = v.model_id where v.id = node_label.id::bigint;
    when 'deployment' then
      select m.name || ' deployment ' || d.id || ' (' || d.strategy || ')' into out
        from registry.deployments d join registry.registered_models m on m.id = d.model_id where d.id = node_label.id::bigint;
    else
      out := null;
  end case;
  return out;
end $$;

create or replace function registry.add_lineage(src_kind text, src_id text, dst_kind text, dst_id text,
                                                relation text default 'derived') returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  src text := registry._node_id(src_kind, src_id);
  dst text := registry._node_id(dst_kind, dst_id);
begin
  perform registry._check_key('lineage relation', relation);
  if (src_kind, dst_kind) in (('dataset', 'run'), ('run', 'model_version'), ('model_version', 'deployment')) then
    raise exception 'lineage from % to % is written by the registry itself', src_kind, dst_kind
      using errcode = '22023',
            hint = 'log a run input with registry.log_input, a model with registry.register_model, deploy with ml.deploy';
  end if;
  insert into registry.lineage_edges(src_kind, src_id, dst_kind, dst_id, relation)
  values (src_kind, src, dst_kind, dst, relation)
  on conflict do nothing;
end $$;
comment on function registry.add_lineage(text, text, text, text, text) is
  'link two existing lineage nodes the caller can see (the edge gets the caller''s tenant)';

create or replace function registry.lineage(kind text, id text, direction text default 'both',
                                            max_depth int default 20)
returns table(side text, depth int, src_kind text, src_id text, src_label text, relation text,
              dst_kind text, dst_id text, dst_label text)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare nid text;
begin
  if direction not in ('up', 'down', 'both', 'upstream', 'downstream') then
    raise exception 'invalid direction %', quote_literal(direction) using errcode = '22023',
      hint = 'use up (what it came from), down (what came from it) or both';
  end if;
  if max_depth is null or max_depth < 1 or max_depth > 100 then
    raise exception 'max_depth must be between 1 and 100, got %', coalesce(max_depth::text, 'NULL') using errcode = '22023',
      hint = 'e.g. max_depth => 20';
  end if;
  nid := registry._node_id(kind, id);
  if not exists (select 1 from registry.lineage_edges e
                  where (e.src_kind = kind and e.src_id = nid) or (e.dst_kind = kind and e.dst_id = nid))
     and kind not in ('dataset', 'training_set', 'run', 'model_version', 'deployment', 'feature_view_version') then
    raise exception '% % not found', replace(kind, '_', ' '), quote_literal(ml._clip(id)) using errcode = '42704',
      hint = 'no lineage edge names it; check the id and the session''s tenant (setting indb.tenant)';
  end if;
  return query
  with recursive
  up_e(src_kind, src_id, dst_kind, dst_id, relation, depth) as (
      select e.src_kind, e.src_id, e.dst_kind, e.dst_id, e.relation, 1
        from registry.lineage_edges e
       where direction in ('up', 'upstream', 'both') and e.dst_kind = kind and e.dst_id = nid
      union
      select e.src_kind, e.src_id, e.dst_kind, e.dst_id, e.relation, u.depth + 1
        from up_e u join registry.lineage_edges e on e.dst_kind = u.src_kind and e.dst_id = u.src_id
       where u.depth < max_depth),
  down_e(src_kind, src_id, dst_kind, dst_id, relation, depth) as (
      select e.src_kind, e.src_id, e.dst_kind, e.dst_id, e.relation, 1
        from registry.lineage_edges e
       where direction in ('down', 'downstream', 'both') and e.src_kind = kind and e.src_id = nid
      union
      select e.src_kind, e.src_id, e.dst_kind, e.dst_id, e.relation, d.depth + 1
        from down_e d join registry.lineage_edges e on e.src_kind = d.dst_kind and e.src_id = d.dst_id
       where d.depth < max_depth),
  edges as (
      select 'up'::text as dir, min(u.depth) as depth, u.src_kind, u.src_id, u.relation, u.dst_kind, u.dst_id
        from up_e u group by 3, 4, 5, 6, 7
      union all
      select 'down', min(d.depth), d.src_kind, d.src_id, d.relation, d.dst_kind, d.dst_id
        from down_e d group by 3, 4, 5, 6, 7)
  select e.dir, e.depth, e.src_kind, e.src_id, registry.node_label(e.src_kind, e.src_id), e.relation,
         e.dst_kind, e.dst_id, registry.node_label(e.dst_kind, e.dst_id)
    from edges e order by e.dir desc, e.depth, e.src_kind, e.src_id, e.dst_kind, e.dst_id;
end $$;
comment on function registry.lineage(text, text, text, int) is
  'walk lineage edges up (what an object came from) and/or down (what was made from it)';

-- lineage edges written whoever inserts the rows (client tracking or ml.train)
create or replace function registry._lineage_trigger() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_table_name = 'model_versions' then
    if new.run_id is not null then
      insert into registry.lineage_edges(src_kind, src_id, dst_kind, dst_id, relation, tenant)
      values ('run', new.run_id::text, 'model_version', new.id::text, 'produced', new.tenant) on conflict do nothing;
    end if;
  elsif tg_table_name = 'deployments' then
    insert into registry.lineage_edges(src_kind, src_id, dst_kind, dst_id, relation, tenant)
    values ('model_version', new.version_id::text, 'deployment', new.id::text, 'deployed', new.tenant) on conflict do nothing;
  elsif tg_table_name = 'run_inputs' then
    insert into registry.lineage_edges(src_kind, src_id, dst_kind, dst_id, relation, tenant)
    values ('dataset', new.dataset_id::text, 'run', new.run_id::text,
            case when new.context = 'training' then 'input' else 'input:' || new.context end, new.tenant)
    on conflict do nothing;
  end if;
  return null;
end $$;

drop trigger if exists indb_lineage on registry.model_versions;
create trigger indb_lineage after insert on registry.model_versions
  for each row execute function registry._lineage_trigger();
drop trigger if exists indb_lineage on registry.deployments;
create trigger indb_lineage after insert on registry.deployments
  for each row execute function registry._lineage_trigger();
drop trigger if exists indb_lineage on registry.run_inputs;
create trigger indb_lineage after insert on registry.run_inputs
  for each row execute function registry._lineage_trigger();
