-- ============================================================================
-- Schema: the seeds' tables keep their names, columns and indexes; every table and
-- column is documented; every table has RLS; the configuration is seeded; the jobs
-- are scheduled.
-- ============================================================================
begin;
select plan(43);

-- ----------------------------------------------------------------------------
-- The tables
-- ----------------------------------------------------------------------------
select has_schema('tollgate', 'schema tollgate exists');
select tables_are('public', array['api_usage', 'ai_api_calls', 'user_usage_daily'],
  'public holds the seeds'' tables and the per-user rollup, nothing else');
select tables_are('tollgate', array[
  'tiers', 'tier_windows', 'user_plans', 'features', 'budgets', 'budget_periods', 'budget_settlements',
  'gateway_state', 'routes', 'route_targets', 'model_prices', 'provider_health', 'response_cache',
  'usage_daily', 'rejections', 'abandoned_requests', 'guard_settings', 'budget_alerts', 'user_flags', 'spend_hourly',
  'upstream_settings', 'priority_classes', 'provider_keys', 'provider_key_usage_daily', 'upstream_queue'],
  'tollgate holds the gateway''s configuration and state');
select views_are('public', array[
  'daily_cost_summary', 'cost_by_feature', 'cost_by_user', 'budget_status', 'rejections_by_layer', 'my_usage',
  'budget_alerts', 'provider_key_spend', 'provider_headroom'],
  'the views for Studio and for users');

-- ----------------------------------------------------------------------------
-- ai_api_calls: the seed's columns, exactly (seed 000), then ours
-- ----------------------------------------------------------------------------
select col_type_is('public', 'ai_api_calls', 'id', 'uuid', 'ai_api_calls.id is uuid');
select col_is_pk('public', 'ai_api_calls', 'id', 'ai_api_calls.id is the primary key');
select col_type_is('public', 'ai_api_calls', 'created_at', 'timestamp with time zone', 'created_at timestamptz');
select col_type_is('public', 'ai_api_calls', 'user_id', 'uuid', 'user_id uuid');
select fk_ok('public', 'ai_api_calls', 'user_id', 'auth', 'users', 'id', 'user_id references auth.users');
select col_type_is('public', 'ai_api_calls', 'feature', 'text', 'feature text');
select col_type_is('public', 'ai_api_calls', 'provider', 'text', 'provider text');
select col_type_is('public', 'ai_api_calls', 'model', 'text', 'model text');
select col_type_is('public', 'ai_api_calls', 'input_tokens', 'integer', 'input_tokens integer');
select col_type_is('public', 'ai_api_calls', 'output_tokens', 'integer', 'output_tokens integer');
select col_type_is('public', 'ai_api_calls', 'latency_ms', 'integer', 'latency_ms integer');
select col_type_is('public', 'ai_api_calls', 'estimated_cost', 'numeric(10,6)', 'estimated_cost numeric(10,6), as the seed has it');
select col_default_is('public', 'ai_api_calls', 'cached', 'false', 'cached defaults to false');
select col_default_is('public', 'ai_api_calls', 'status', 'success'::text, 'status defaults to success');
select is(
  (select array_agg(a.attname::text order by a.attnum)
   from pg_attribute as a
   where a.attrelid = 'public.ai_api_calls'::regclass and a.attnum > 0 and not a.attisdropped and a.attnum <= 12),
  array['id', 'created_at', 'user_id', 'feature', 'provider', 'model', 'input_tokens', 'output_tokens',
    'latency_ms', 'estimated_cost', 'cached', 'status'],
  'the seed''s twelve columns come first, in the seed''s order');
select has_index('public', 'ai_api_calls', 'idx_ai_calls_daily', array['created_at', 'provider'], 'the seed''s idx_ai_calls_daily');
select has_index('public', 'ai_api_calls', 'idx_ai_calls_user', array['user_id', 'created_at'], 'the seed''s idx_ai_calls_user');
select has_unique('public', 'ai_api_calls', 'request_id is unique: settle() is idempotent on it');

-- ----------------------------------------------------------------------------
-- api_usage: the seed's sliding-window log
-- ----------------------------------------------------------------------------
select has_column('public', 'api_usage', 'user_id', 'api_usage.user_id');
select has_column('public', 'api_usage', 'created_at', 'api_usage.created_at');
select col_type_is('public', 'api_usage', 'tokens_used', 'integer', 'api_usage.tokens_used (seed)');
select col_type_is('public', 'api_usage', 'estimated_cost', 'numeric(10,6)', 'api_usage.estimated_cost (seed)');
select col_is_pk('public', 'api_usage', 'request_id', 'api_usage is keyed by request_id');
select has_index('public', 'api_usage', 'api_usage_user_created_idx', array['user_id', 'created_at'],
  'the sliding windows scan (user_id, created_at)');
select has_index('public', 'api_usage', 'api_usage_reserved_idx', 'the expiry job scans only reserved rows');

-- ----------------------------------------------------------------------------
-- Documentation and protection of every table
-- ----------------------------------------------------------------------------
select is(
  (select coalesce(array_agg(c.oid::regclass::text order by c.oid::regclass::text), '{}')
   from pg_class as c
   where c.relnamespace in ('public'::regnamespace, 'tollgate'::regnamespace)
     and c.relkind in ('r', 'p') and not c.relrowsecurity),
  '{}'::text[],
  'row level security is enabled on every table of public and tollgate');
select is(
  (select coalesce(array_agg(c.oid::regclass::text order by c.oid::regclass::text), '{}')
   from pg_class as c
   where c.relnamespace in ('public'::regnamespace, 'tollgate'::regnamespace)
     and c.relkind in ('r', 'v') and obj_description(c.oid, 'pg_class') is null),
  '{}'::text[],
  'every table and view has a comment');
select is(
  (select coalesce(array_agg(x.name order by x.name), '{}')
   from (
     select c.oid::regclass::text || '.' || a.attname as name
     from pg_class as c
     join pg_attribute as a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
     where c.relnamespace in ('public'::regnamespace, 'tollgate'::regnamespace)
       and c.relkind in ('r', 'v') and col_description(c.oid, a.attnum) is null
   ) as x),
  '{}'::text[],
  'every column has a comment');
select is(
  (select coalesce(array_agg(p.oid::regprocedure::text order by p.oid::regprocedure::text), '{}')
   from pg_proc as p
   where p.pronamespace = 'tollgate'::regnamespace and obj_description(p.oid, 'pg_proc') is null),
  '{}'::text[],
  'every function has a comment');
select is(
  (select coalesce(array_agg(c.oid::regclass::text order by c.oid::regclass::text), '{}')
   from pg_class as c
   where c.relnamespace = 'public'::regnamespace and c.relkind = 'v'
     and not coalesce('security_invoker=true' = any (c.reloptions), false)),
  '{}'::text[],
  'every view is security_invoker');

-- ----------------------------------------------------------------------------
-- Seeded configuration (seeds 000 and 001)
-- ----------------------------------------------------------------------------
select results_eq(
  $$select tier, name, window_seconds, max_requests from tollgate.tier_windows order by tier, window_seconds$$,
  $$values ('anonymous', 'minute', 60, 5), ('anonymous', 'hour', 3600, 10),
           ('free', 'minute', 60, 10), ('free', 'hour', 3600, 20),
           ('pro', 'minute', 60, 60), ('pro', 'hour', 3600, 100)$$,
  'tiers: free 20/hour (10/minute burst), pro 100/hour (60/minute), anonymous smaller');
select ok((select count(*) = 1 from tollgate.gateway_state), 'gateway_state has its single row');
select is((select throttled or anomaly_paused from tollgate.gateway_state), false, 'the gateway starts unthrottled');
select ok(exists (select from tollgate.features where name = 'default' and priority = 'normal'), 'feature `default` exists');
select ok(exists (select from tollgate.budgets where scope = 'global' and hard_cap and thresholds = '{50,75,90,100}'),
  'a global budget with a hard cap and the 50/75/90/100 thresholds');
select results_eq(
  $$select provider, model from tollgate.route_targets where route_model = 'claude-sonnet-4-6' order by position$$,
  $$values ('anthropic'::text, 'claude-sonnet-4-6'::text), ('openai', 'gpt-4o')$$,
  'claude-sonnet-4-6 falls back to OpenAI gpt-4o (seed 000: Claude -> GPT)');
select is((select cheaper_model from tollgate.routes where model = 'gpt-4o'), 'gpt-4o-mini',
  'gpt-4o has a cheaper model for restricted mode');

-- ----------------------------------------------------------------------------
-- Jobs scheduled with five-field schedules
-- ----------------------------------------------------------------------------
select is(
  (select string_agg(format('%s | %s | %s', jobname, schedule, command), E'\n' order by jobname)
   from cron.job where jobname like 'tollgate-%'),
  E'tollgate-check-anomalies | * * * * * | select tollgate.check_anomalies()\n'
    'tollgate-check-budgets | * * * * * | select tollgate.check_budgets()\n'
    'tollgate-check-provider-keys | * * * * * | select tollgate.check_provider_keys()\n'
    'tollgate-deliver-alerts | * * * * * | select tollgate.deliver_alerts()\n'
    'tollgate-expire-reservations | * * * * * | select tollgate.expire_reservations()\n'
    'tollgate-prune-api-usage | */5 * * * * | select tollgate.prune_api_usage()',
  'pg_cron runs the guard, the delivery, the expiry and the keys'' check every minute, the pruning every five minutes');
select is(
  (select count(*)::integer from cron.job where jobname like 'tollgate-%'
     and array_length(regexp_split_to_array(schedule, '\s+'), 1) <> 5),
  0,
  'every schedule has five fields (Debian''s pg_cron 1.4 has no seconds)');

select * from finish();
rollback;
