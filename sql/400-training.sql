-- Training and deployment in SQL (issue 5).
-- Tables: migrations/versions/0002 (registry core), 0005 (training_projects, training_trials, prediction_log),
-- 0009 (a project remembers its relation's author, test_size and test_sampling).
-- Python: plpython/indb_runtime/{training,preprocess,algorithms,explain,mlp,model_store}.py.
--
-- ml.train is SECURITY INVOKER: it reads the caller's relation with the caller's rights, and writes the
-- registry only through the registry's SECURITY DEFINER functions (registry.start_run, log_batch,
-- register_dataset, log_input, log_trials, register_model, add_lineage, end_run) and the two below
-- (ml._save_training_project, ml._deploy_version). ml.deploy is SECURITY DEFINER (it runs no caller SQL).

-- the one table of key metrics: the metric (higher is better) that ranks a task's models
create or replace function ml.key_metric(task text) returns text
language sql immutable parallel safe
as $$
  select k.metric from (values ('regression', 'r2'), ('classification', 'f1'), ('clustering', 'silhouette'))
                       k(task, metric) where k.task = key_metric.task
$$;
comment on function ml.key_metric(text) is
  'the metric that ranks the models of a task (higher is better): automatic deploy, ml.deploy(''best_score''), search';

-- may the caller run SQL that `author` stored (a project's relation)? Only its author, or anyone when the
-- author is an indb_admin (SECURITY.md, "A catalog value is user input at the moment it is used")
create or replace function ml._may_run_code_of(author name) returns boolean
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select author is not null and exists (select 1 from pg_roles r where r.rolname = author)
         and (author = ml.caller() or pg_has_role(author, 'indb_admin', 'member'))
$$;
comment on function ml._may_run_code_of(name) is
  'internal: true when the caller may run SQL stored by author (it is the author, or the author is an indb_admin)';

-- ---- ml.train ----------------------------------------------------------------------------------------------
create or replace function ml._train_py(
    project text,
    task text default null,
    relation text default null,
    target text default null,
    algorithm text default 'xgboost',
    hyperparams jsonb default '{}',
    test_size float8 default null,
    test_sampling text default null,
    preprocess jsonb default null,
    search text default null,
    search_params jsonb default '{}',
    automatic_deploy bool default true,
    materialize bool default false)
returns table (out_project text, out_model_id bigint, out_algorithm text, out_metrics jsonb, out_deployed bool,
               out_status text, out_hyperparams jsonb, out_test_size float8)
language plpython3u volatile parallel unsafe
-- no pinned search_path: relation names and queries resolve like in the caller's session (invoker rights)
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
r = errors.call(plpy, training.train, plpy, project, task, relation, target, algorithm, hyperparams, test_size,
                test_sampling, preprocess, search, search_params, automatic_deploy, materialize)
return [(r['project'], r['model_id'], r['algorithm'], r['metrics'], r['deployed'], r['status'], r['hyperparams'],
         r['test_size'])]
$$;
select ml._wrap_python('ml._train', 'ml._train_py(text, text, text, text, text, jsonb, float8, text, jsonb, text, jsonb, bool, bool)');

-- the public face: result columns named like the arguments they echo (a PL/pgSQL wrapper cannot have that)
create or replace function ml.train(
    project text,
    task text default null,
    relation text default null,
    target text default null,
    algorithm text default 'xgboost',
    hyperparams jsonb default '{}',
    test_size float8 default null,
    test_sampling text default null,
    preprocess jsonb default null,
    search text default null,
    search_params jsonb default '{}',
    automatic_deploy bool default true,
    materialize bool default false)
returns table (project text, model_id bigint, algorithm text, metrics jsonb, deployed bool, status text,
               hyperparams jsonb, test_size float8)
language sql volatile parallel unsafe
as $$
  select * from ml._train(project, task, relation, target, algorithm, hyperparams, test_size, test_sampling,
                          preprocess, search, search_params, automatic_deploy, materialize)
$$;
comment on function ml.train(text, text, text, text, text, jsonb, float8, text, jsonb, text, jsonb, bool, bool) is
'train a model for a project on a table, view or SELECT; records run, snapshot, metrics, curves, model; deploys it '
'when it beats the deployed one on the same test rows. A retrain reuses the project''s relation (only for its '
'author, or when the author is an indb_admin), target, test_size, test_sampling and preprocess unless given. Returns the '
'effective hyperparameters (a search''s choice included) and a status saying what the deploy decision was';

-- a project the caller may change: it exists and is visible (42704), and it is the caller's tenant's (a shared
-- project seen from a tenant session: 42501 naming why); the row is locked until the end of the transaction
create or replace function ml._project_for_write(project text, action text) returns registry.registered_models
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare m registry.registered_models;
begin
  if project is null or btrim(project) = '' then
    raise exception 'project name is empty' using errcode = '22023', hint = 'name the project';
  end if;
  select * into m from registry.registered_models r where r.name = project;
  if not found then
    raise exception 'project "%" does not exist', ml._clip(project) using errcode = '42704',
      hint = 'train it first with ml.train (projects of other tenants are not visible)';
  end if;
  if m.tenant is distinct from ml.current_tenant() and not ml.is_admin() then
    raise exception 'cannot % project "%": it is shared (it belongs to no tenant) and this session acts for tenant "%"',
      action, project, ml.current_tenant() using errcode = '42501',
      hint = 'an indb_admin, or a writer acting for no tenant, changes shared projects; or train a project of your own';
  end if;
  perform 1 from registry.registered_models r where r.id = m.id for update;
  return m;
end $$;

-- ml.train's project settings: what to retrain on (and whose SQL that is), the target and the split
create or replace function ml._save_training_project(project text, task text, relation text, target text,
                                                    test_size float8, test_sampling text, preprocess jsonb,
                                                    new_relation boolean)
returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare m registry.registered_models := ml._project_for_write(project, 'train');
begin
  if task is null or task not in ('regression', 'classification', 'clustering') then
    raise exception 'unknown task %', coalesce(quote_literal(task), 'NULL') using errcode = '22023',
      hint = 'tasks: regression, classification, clustering';
  end if;
  if test_size is null or not (test_size > 0 and test_size < 1) then
    raise exception 'test_size must be between 0 and 1 (exclusive), got %', coalesce(test_size::text, 'NULL')
      using errcode = '22023', hint = 'e.g. test_size => 0.2';
  end if;
  if test_sampling is null or test_sampling not in ('random', 'last', 'stratified') then
    raise exception 'unknown test_sampling %', coalesce(quote_literal(test_sampling), 'NULL') using errcode = '22023',
      hint = 'test_sampling: random, last or stratified';
  end if;
  if relation is null or btrim(relation) = '' then
    raise exception 'relation is empty' using errcode = '22023', hint = 'pass a table, view or SELECT';
  end if;
  if preprocess is not null and jsonb_typeof(preprocess) <> 'object' then
    raise exception 'preprocess must be a JSON object' using errcode = '22023',
      hint = 'e.g. preprocess => ''{"total_bedrooms": {"impute": "median"}}''';
  end if;
  insert into registry.training_projects as s (model_id, task, relation, target, test_size, test_sampling,
                                               preprocess, author, tenant)
  values (m.id, task, relation, target, test_size, test_sampling, preprocess, ml.caller(), m.tenant)
  on conflict (model_id) do update
     set relation = case when new_relation then excluded.relation else s.relation end,
         author = case when new_relation then excluded.author else s.author end,
         target = excluded.target, test_size = excluded.test_size, test_sampling = excluded.test_sampling,
         preprocess = excluded.preprocess, updated_at = now();
end $$;
comment on function ml._save_training_project(text, text, text, text, float8, text, jsonb, boolean) is
  'internal (ml.train): remember a project''s relation (and its author), target, split and preprocessing';

-- ---- deployment --------------------------------------------------------------------------------------------
-- make version_id the deployed model of project (a new registry.deployments row; its lineage edge comes from
-- registry._lineage_trigger). changed is false when it already was, except for a rollback, which always
-- records the move.
create or replace function ml._deploy_version(project text, version_id bigint, strategy text)
returns table (deployment_id bigint, changed boolean)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_variable
declare
  m registry.registered_models := ml._project_for_write(project, 'deploy');
  cur registry.deployments;
  dep bigint;
begin
  if strategy is null or strategy !~ '^[a-z_]{1,32}$' then
    raise exception 'invalid deploy strategy %', coalesce(quote_literal(strategy), 'NULL') using errcode = '22023',
      hint = 'strategies: best_score, most_recent, rollback, or pass model_id';
  end if;
  if not exists (select 1 from registry.model_versions v where v.id = version_id and v.model_id = m.id) then
    raise exception 'model % does not belong to project "%"', coalesce(version_id::text, 'NULL'), project
      using errcode = '42704', hint = format('see select model_id from ml.models where project = %L', project);
  end if;
  select * into cur from registry.deployments d where d.model_id = m.id order by d.id desc limit 1;
  if cur.version_id = version_id and strategy <> 'rollback' then
    return query select cur.id, false;
    return;
  end if;
  insert into registry.deployments (model_id, version_id, strategy, previous_id, tenant)
  values (m.id, version_id, strategy, cur.id, m.tenant)
  returning id into dep;
  return query select dep, true;
end $$;
comment on function ml._deploy_version(text, bigint, text) is
  'internal: deploy a model version of a project (ml.deploy, ml.train''s automatic deploy)';

create or replace function ml._deploy(project text, strategy text default 'best_score', model_id bigint default null)
returns table (out_project text, out_model_id bigint, out_strategy text, out_deployed bool, out_status text)
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_variable
declare
  m registry.registered_models := ml._project_for_write(project, 'deploy');
  cur registry.deployments;
  strat text := coalesce(strategy, 'best_score');
  key text;
  v bigint;
  r record;
begin
  select * into cur from registry.deployments d where d.model_id = m.id order by d.id desc limit 1;
  if model_id is not null then
    v := model_id;
    if strat = 'best_score' then strat := 'specific'; end if;
  elsif strat = 'best_score' then
    key := ml.key_metric(coalesce(m.task, (select s.task from registry.training_projects s where s.model_id = m.id)));
    select x.id into v from registry.model_versions x
     where x.model_id = m.id and x.source = 'ml.train' and (x.metrics ->> key) is not null
     order by (x.metrics ->> key)::float8 desc, x.id desc limit 1;
    if v is null then
      raise exception 'project "%" has no scored models to deploy', project using errcode = '42704',
        hint = 'train one with ml.train, or deploy a specific model: ml.deploy(project, model_id => ...)';
    end if;
  elsif strat = 'most_recent' then
    select x.id into v from registry.model_versions x where x.model_id = m.id and x.source = 'ml.train'
     order by x.id desc limit 1;
    if v is null then
      raise exception 'project "%" has no models', project using errcode = '42704', hint = 'train one with ml.train';
    end if;
  elsif strat = 'rollback' then
    if cur.previous_id is null then
      raise exception 'project "%" has no previous deployment to roll back to', project using errcode = '55000',
        hint = 'deploy a specific model with ml.deploy(project, model_id => ...)';
    end if;
    select d.version_id into v from registry.deployments d where d.id = cur.previous_id;
  else
    raise exception 'unknown deploy strategy "%"', strat using errcode = '22023',
      detail = 'valid: best_score, most_recent, rollback, or pass model_id',
      hint = format('e.g. ml.deploy(%L, ''best_score'')', project);
  end if;
  select * into r from ml._deploy_version(project, v, strat);
  return query select m.name, v, strat, true,
                      case when r.changed then 'deployed' else 'already deployed' end;
end $$;
comment on function ml._deploy(text, text, bigint) is 'internal: ml.deploy';

create or replace function ml.deploy(project text, strategy text default 'best_score', model_id bigint default null)
returns table (project text, model_id bigint, strategy text, deployed bool, status text)
language sql volatile parallel unsafe
as $$ select * from ml._deploy(project, strategy, model_id) $$;
comment on function ml.deploy(text, text, bigint) is
'deploy a model of a project: best_score (each model''s own test score), most_recent, rollback (the previously '
'deployed) or a specific model_id. deployed is true when the model is the deployed one after the call; status '
'says whether the call changed the deployment (deployed) or it already was (already deployed)';

-- ---- views -----------------------------------------------------------------------------------------------
-- Two numbers name a model: model_id, the id of the model version across all projects (what ml.deploy's
-- model_id, ml.evaluate's model_id and ml.train's result use; registry.model_versions.id), and version, its
-- number within the project (1, 2, 3, ...; what registry.get_model_version(project, '2') takes).
create or replace view ml.models as
select v.id as model_id, m.name as project, v.version, v.algorithm, v.task, v.metrics, v.hyperparams,
       v.run_id, v.created_at, v.created_by, length(v.artifact) as artifact_bytes,
       (v.id = d.version_id) as deployed
from registry.model_versions v
join registry.registered_models m on m.id = v.model_id
left join lateral (select version_id from registry.deployments where model_id = m.id order by id desc limit 1) d on true
where v.source = 'ml.train'
order by m.name, v.version;
comment on view ml.models is 'models trained by ml.train, one row per model version, by project and version';
comment on column ml.models.model_id is
  'id of the model across all projects (ml.deploy(project, model_id => ...), ml.evaluate, ml.train''s result)';
comment on column ml.models.version is 'number of the model within its project: 1, 2, 3, ... in training order';
comment on column ml.models.deployed is 'true for the model the project serves now (its newest deployment)';

create or replace view ml.deployments as
select d.id as deployment_id, m.name as project, d.version_id as model_id, v.version, v.algorithm, d.strategy,
       d.previous_id as previous_deployment_id, d.deployed_at, d.deployed_by,
       d.id = max(d.id) over (partition by d.model_id) as active
from registry.deployments d
join registry.registered_models m on m.id = d.model_id
join registry.model_versions v on v.id = d.version_id
order by m.name, d.id;
comment on view ml.deployments is
  'deployment history of ml.train projects, oldest first per project; active marks the one served now';
comment on column ml.deployments.deployment_id is 'id of the deployment (one row per ml.deploy or automatic deploy)';
comment on column ml.deployments.model_id is
  'id of the deployed model across all projects (ml.models.model_id; what ml.deploy(project, model_id => ...) takes)';
comment on column ml.deployments.version is 'number of the deployed model within its project (ml.models.version)';
comment on column ml.deployments.strategy is
  'how it was chosen: automatic (ml.train), best_score, most_recent, rollback or specific (a given model_id)';
comment on column ml.deployments.previous_deployment_id is
  'the deployment this one replaced (what ml.deploy(project, ''rollback'') goes back to)';
comment on column ml.deployments.active is 'true for the project''s newest deployment: the model ml.predict serves';

create or replace view ml.projects_overview as
select m.name as project, s.task, d.version_id as deployed_model_id, v.version as deployed_version, v.algorithm,
       ml.key_metric(s.task) as key_metric,
       (v.metrics ->> ml.key_metric(s.task))::float8 as score,
       v.created_at as trained_at, ds.row_count as rows, s.relation, s.target,
       (select count(*) from registry.model_versions x where x.model_id = m.id) as models,
       s.log_predictions, s.test_size, s.test_sampling, s.preprocess, s.author as relation_author
from registry.registered_models m
join registry.training_projects s on s.model_id = m.id
left join lateral (select version_id from registry.deployments where model_id = m.id order by id desc limit 1) d on true
left join registry.model_versions v on v.id = d.version_id
left join lateral (select x.row_count from registry.run_inputs ri join registry.datasets x on x.id = ri.dataset_id
                   where ri.run_id = v.run_id order by x.id desc limit 1) ds on true
order by m.name;
comment on view ml.projects_overview is
  'one row per ml.train project: deployed model, its key metric, when it was trained, rows, split, relation and its author';
comment on column ml.projects_overview.deployed_model_id is 'model_id of the deployed model (ml.models.model_id)';
comment on column ml.projects_overview.deployed_version is 'its number within the project (ml.models.version)';
comment on column ml.projects_overview.score is 'the deployed model''s key_metric on its own test rows';
