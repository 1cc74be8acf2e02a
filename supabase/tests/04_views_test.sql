-- ============================================================================
-- Views: daily_cost_summary has exactly the seed's columns and, read from the
-- rollups, the values of the seed's own aggregate over ai_api_calls; the other cost
-- views agree with the log too; no view scans ai_api_calls.
-- ============================================================================
begin;
select plan(18);
set local timezone = 'UTC';

\ir helpers.psql

insert into tollgate.tiers (name, max_output_tokens) values ('test', 4096);
insert into tollgate.tier_windows (tier, name, window_seconds, max_requests) values ('test', 'minute', 60, 1000);
insert into tollgate.features (name) values ('chat'), ('search');
update tollgate.budgets set monthly_limit_usd = 1000 where scope = 'global';

-- A history: 3 users, 3 features, 4 models on 2 providers, 6 days, every status, cache
-- hits, fallbacks, reservations that expire (one of them settled late after all).
create temporary table users_ on commit drop as
  select g as n, pg_temp.new_user('views' || g || '@test', 'test') as id from generate_series(0, 2) as g;
do $$
declare
  v_i integer;
  v_user uuid;
  v_request uuid;
  v_model text;
begin
  for v_i in 1 .. 90 loop
    v_user := (select id from users_ where n = v_i % 3);
    v_model := (array['gpt-4o-mini', 'gpt-4o', 'claude-haiku-4-5', 'claude-sonnet-4-6'])[1 + v_i % 4];
    v_request := (tollgate.admit(jsonb_build_object('request_id', gen_random_uuid(), 'user_id', v_user,
      'feature', (array['default', 'chat', 'search'])[1 + v_i % 3], 'model', v_model,
      'estimated_input_tokens', 50 * v_i, 'max_output_tokens', 300, 'estimated_cost_usd', 0.0001 * v_i)) ->> 'request_id')::uuid;
    -- Spread the calls over six UTC days (and across midnight).
    update public.api_usage set created_at = created_at - make_interval(days => v_i % 6, hours => v_i % 5)
    where request_id = v_request;
    if v_i % 13 = 0 then
      continue;  -- never settled: the expiry job will charge it
    end if;
    perform tollgate.settle(jsonb_build_object(
      'request_id', v_request, 'user_id', v_user,
      'provider', case when v_model like 'claude%' then 'anthropic' else 'openai' end, 'model', v_model,
      'status', (array['success', 'success', 'success', 'error', 'timeout', 'client_closed', 'success'])[1 + v_i % 7],
      'input_tokens', 40 * v_i, 'output_tokens', 7 * v_i + 3, 'latency_ms', 100 + (v_i * 37) % 1900,
      'cost_usd', round(0.0000317 * v_i, 6), 'cached', v_i % 11 = 0,
      'fallback_from', case when v_i % 9 = 0 then 'openai/gpt-4o' end));
  end loop;
end;
$$;
update public.api_usage set created_at = created_at - interval '11 minutes' where status = 'reserved';
select is(tollgate.expire_reservations(), 6, 'six reservations were never settled and expire');
select lives_ok(format('select tollgate.settle(%L)', (
    select jsonb_build_object('request_id', request_id, 'user_id', user_id, 'provider', provider, 'model', model,
      'status', 'success', 'input_tokens', 11, 'output_tokens', 22, 'latency_ms', 333, 'cost_usd', 0.000123)
    from public.api_usage where status = 'expired' order by request_id limit 1)),
  'one of them is settled late after all');
-- Rollup rows written by other database sessions land in other shards: simulate some.
update tollgate.usage_daily set shard = (shard + 7) % 16 where model in ('gpt-4o', 'claude-haiku-4-5');

-- ----------------------------------------------------------------------------
-- daily_cost_summary: the seed's columns, the seed's values
-- ----------------------------------------------------------------------------
select is(
  (select array_agg(a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod) order by a.attnum)
   from pg_attribute as a where a.attrelid = 'public.daily_cost_summary'::regclass and a.attnum > 0),
  array['day timestamp with time zone', 'provider text', 'model text', 'total_calls bigint', 'total_input_tokens bigint',
    'total_output_tokens bigint', 'total_cost numeric', 'avg_latency_ms integer', 'cache_hits bigint', 'errors bigint'],
  'daily_cost_summary has exactly the seed''s columns, names, order and types');
select results_eq(
  $$select * from public.daily_cost_summary order by day desc, provider, model$$,
  $$select
      date_trunc('day', created_at) as day,
      provider,
      model,
      count(*) as total_calls,
      sum(input_tokens) as total_input_tokens,
      sum(output_tokens) as total_output_tokens,
      sum(estimated_cost) as total_cost,
      avg(latency_ms)::integer as avg_latency_ms,
      count(*) filter (where cached) as cache_hits,
      count(*) filter (where status in ('error', 'timeout')) as errors
    from public.ai_api_calls
    group by 1, 2, 3
    order by 1 desc, 2, 3$$,
  'daily_cost_summary equals the seed''s aggregate over ai_api_calls, row for row (errors = error or timeout)');
select ok((select count(*) >= 12 from public.daily_cost_summary), 'the comparison covered many day x provider x model rows');
select ok((select count(distinct status) = 5 from public.ai_api_calls), 'and every status');

-- ----------------------------------------------------------------------------
-- The other cost views agree with the log
-- ----------------------------------------------------------------------------
select results_eq(
  $$select month, feature, total_calls, total_input_tokens, total_output_tokens, total_cost, cache_hits, errors, expired
    from public.cost_by_feature order by month desc, feature$$,
  $$select date_trunc('month', created_at)::date, feature, count(*), sum(input_tokens), sum(output_tokens),
      sum(estimated_cost), count(*) filter (where cached), count(*) filter (where status in ('error', 'timeout')),
      count(*) filter (where status = 'expired')
    from public.ai_api_calls group by 1, 2 order by 1 desc, 2$$,
  'cost_by_feature equals the aggregate per month and feature');
select is((select sum(percent_of_month) between 99.98 and 100.02 from public.cost_by_feature group by month order by month desc limit 1),
  true, 'the features'' shares of a month add up to 100%');
select results_eq(
  $$select user_id, total_calls, total_cost, email from public.cost_by_user order by month desc, rank, user_id$$,
  $$select c.user_id, count(*), sum(c.estimated_cost), min(u.email)::text from public.ai_api_calls as c
    join auth.users as u on u.id = c.user_id
    group by date_trunc('month', c.created_at), c.user_id
    order by date_trunc('month', c.created_at) desc, sum(c.estimated_cost) desc, c.user_id$$,
  'cost_by_user ranks users by their spend, equal to the aggregate');
select results_eq(
  $$select spent_usd, reserved_usd, calls from public.budget_status where scope = 'global'$$,
  $$select coalesce(sum(estimated_cost), 0), 0::numeric, count(*)
    from public.ai_api_calls where created_at >= date_trunc('month', now())$$,
  'budget_status: this month''s spend and calls equal the log, nothing in flight');
select ok((select projected_spend_usd >= spent_usd and percent_used >= 0 from public.budget_status where scope = 'global'),
  'budget_status projects the month''s spend forward');
insert into tollgate.rejections (layer, code, feature, user_id)
select 'user_window', 'rate_limited', 'chat', id from users_;
insert into tollgate.rejections (layer, code, feature) values ('budget', 'budget_exceeded', 'default');
select results_eq(
  $$select layer, code, rejections, users from public.rejections_by_layer order by rejections desc$$,
  $$values ('user_window'::text, 'rate_limited'::text, 3::bigint, 3::bigint), ('budget', 'budget_exceeded', 1, 0)$$,
  'rejections_by_layer counts refusals and distinct users per layer and code');

-- ----------------------------------------------------------------------------
-- Folding the shards of past days keeps every figure
-- ----------------------------------------------------------------------------
create temporary table before_fold on commit drop as select * from public.daily_cost_summary;
select ok((select (tollgate.prune_api_usage() ->> 'usage_daily_folded')::integer > 0), 'the pruning job folds past days'' shards');
select is((select count(*)::integer from tollgate.usage_daily where shard <> 0 and day < current_date), 0,
  'past days are one row per key again');
select results_eq($$select * from public.daily_cost_summary order by 1, 2, 3$$, $$select * from before_fold order by 1, 2, 3$$,
  'daily_cost_summary is unchanged by the fold');

-- ----------------------------------------------------------------------------
-- A user's own usage
-- ----------------------------------------------------------------------------
select set_config('request.jwt.claims', json_build_object('sub', (select id from users_ where n = 1), 'role', 'authenticated')::text, true);
set local role authenticated;
create temporary table mine on commit drop as select * from public.my_usage;
reset role;
select results_eq(
  -- (days with calls only: this test moved reservations back in time after admission
  -- had counted them on today's row)
  $$select day, calls, cost_usd from mine where calls > 0 order by day$$,
  $$select (created_at at time zone 'UTC')::date, count(*)::integer, sum(estimated_cost)::numeric
    from public.ai_api_calls where user_id = (select id from users_ where n = 1) group by 1 order by 1$$,
  'my_usage shows a signed-in user their own days, equal to their calls');

-- ----------------------------------------------------------------------------
-- The views read rollups, never the call log
-- ----------------------------------------------------------------------------
select is(
  (select coalesce(array_agg(distinct v.relname::text), '{}')
   from pg_depend as d
   join pg_rewrite as rw on rw.oid = d.objid
   join pg_class as v on v.oid = rw.ev_class
   where d.refobjid in ('public.ai_api_calls'::regclass, 'public.api_usage'::regclass) and v.relkind = 'v'),
  '{}'::text[],
  'no view reads ai_api_calls or api_usage');
create function pg_temp.plan_of(query text)
returns text
language plpgsql
as $$
declare
  v_line text;
  v_plan text := '';
begin
  for v_line in execute 'explain ' || query loop
    v_plan := v_plan || v_line || E'\n';
  end loop;
  return v_plan;
end;
$$;
select ok(
  (select position('ai_api_calls' in p) = 0 and position('usage_daily' in p) > 0
   from pg_temp.plan_of('select * from public.daily_cost_summary') as p),
  'the plan of daily_cost_summary scans the rollup, not the call log');
select * from finish();
rollback;
