-- ============================================================================
-- Admission: tollgate.admit decides layer by layer, reserves, and answers with
-- everything the function needs. (Concurrency is proven by the Deno tests with
-- real parallel connections: tests/db_admission_test.ts.)
-- ============================================================================
begin;
select plan(85);

\ir helpers.psql

-- A request for `user_id`, with `extra` keys merged over the defaults.
create function pg_temp.admit(user_id uuid, extra jsonb default '{}')
returns jsonb
language sql
as $$
  select tollgate.admit(jsonb_build_object(
    'request_id', gen_random_uuid(), 'user_id', user_id, 'model', 'gpt-4o-mini',
    'estimated_input_tokens', 100, 'max_output_tokens', 100, 'estimated_cost_usd', 0.001) || extra)
$$;

-- A tier without practical request limits, for the tests that are not about windows.
insert into tollgate.tiers (name, daily_token_quota, monthly_token_quota, monthly_cost_cap_usd, max_output_tokens)
values ('test', null, null, null, 4096);
insert into tollgate.tier_windows (tier, name, window_seconds, max_requests) values ('test', 'minute', 60, 1000);
create function pg_temp.test_user(email text)
returns uuid
language plpgsql
as $$
declare
  v_id uuid := pg_temp.new_user(email);
begin
  insert into tollgate.user_plans (user_id, tier) values (v_id, 'test');
  return v_id;
end;
$$;

insert into tollgate.features (name, priority, allowed_models, cache_ttl_seconds, paused, paused_reason)
values
  ('bg', 'background', null, 0, false, null),
  ('crit', 'critical', null, 0, false, null),
  ('only-mini', 'normal', '{gpt-4o-mini}', 0, false, null),
  ('off', 'normal', null, 0, true, 'maintenance'),
  ('cached', 'normal', null, 300, false, null),
  ('metered', 'normal', null, 0, false, null),
  ('crit-metered', 'critical', null, 0, false, null),
  ('soft', 'normal', null, 0, false, null);
update tollgate.budgets set monthly_limit_usd = 1000 where scope = 'global';

create temporary table t (name text primary key, a jsonb) on commit drop;
create temporary table ids (name text primary key, id uuid) on commit drop;
insert into ids values ('free', pg_temp.new_user('free@test')), ('main', pg_temp.test_user('main@test'));

-- ----------------------------------------------------------------------------
-- An admitted request
-- ----------------------------------------------------------------------------
insert into t values ('basic', pg_temp.admit((select id from ids where name = 'free')));
select is((select a ->> 'allowed' from t where name = 'basic'), 'true', 'a normal request is admitted');
select is((select a ->> 'tier' from t where name = 'basic'), 'free', 'a user without a plan is on `free`');
select is((select a -> 'layer' = 'null' and a -> 'code' = 'null' from t where name = 'basic'), true,
  'an admitted, unrestricted request has no layer and no code');
select is((select a -> 'route' from t where name = 'basic'),
  '[{"provider": "openai", "model": "gpt-4o-mini", "state": "closed", "probe": false, "key": null},
    {"provider": "anthropic", "model": "claude-haiku-4-5", "state": "closed", "probe": false, "key": null}]'::jsonb,
  'the route: OpenAI first, Anthropic as fallback, breakers closed');
select is((select jsonb_path_query_array(a -> 'windows', '$[*].remaining') from t where name = 'basic'), '[9, 19]'::jsonb,
  'windows: 9 left of 10 per minute, 19 left of 20 per hour');
select is((select a -> 'reserved' from t where name = 'basic'),
  '{"estimated_tokens": 200, "estimated_cost_usd": 0.001}'::jsonb, 'the estimate is reserved');
select is((select a -> 'feature' from t where name = 'basic'),
  '{"name": "default", "priority": "normal", "max_tokens": 100, "cache_ttl_seconds": 0}'::jsonb,
  'feature `default`, with the effective max_tokens');
select results_eq(
  $$select status, tokens_used, estimated_cost, feature, provider, model from public.api_usage
    where request_id = (select (a ->> 'request_id')::uuid from t where name = 'basic')$$,
  $$values ('reserved'::text, 200, 0.001::numeric(10,6), 'default'::text, 'openai'::text, 'gpt-4o-mini'::text)$$,
  'the api_usage row is a reservation with the estimate');
select is((select reserved_tokens::integer from public.user_usage_daily where user_id = (select id from ids where name = 'free')),
  200, 'the user''s reserved tokens include it');
select is((select sum(p.reserved_total_usd) from tollgate.budget_periods as p join tollgate.budgets as b on b.id = p.budget_id
  where b.scope = 'global'), 0.001::numeric, 'the global budget''s reservations include it');
select is((select array_agg(k order by k) from t, jsonb_object_keys(t.a) as k where t.name = 'basic'),
  array['allowed', 'cached', 'code', 'dry_run', 'duplicate', 'feature', 'layer', 'message', 'model', 'prices',
    'queue', 'request_id', 'reserved', 'restricted', 'retry_after_seconds', 'route', 'shed', 'spend', 'tier', 'tokens',
    'warnings', 'windows'],
  'the answer has every key of the contract');
select is((select jsonb_build_array(a -> 'queue', a -> 'shed') from t where name = 'basic'), '[null, null]'::jsonb,
  'a provider without keys or a queue is not guarded: no queue, nothing shed');

-- ----------------------------------------------------------------------------
-- Bad input: invalid_request, nothing reserved, the rejection logged
-- ----------------------------------------------------------------------------
select is(tollgate.admit('[1, 2]') ->> 'code', 'invalid_request', 'a request that is not an object is invalid');
select is(tollgate.admit(jsonb_build_object('request_id', 'nope', 'user_id', (select id from ids where name = 'main'),
  'model', 'gpt-4o-mini')) ->> 'message', 'Invalid request: request_id must be a UUID.', 'a bad request_id is named');
select is(pg_temp.admit(gen_random_uuid()) ->> 'message', 'Invalid request: unknown user.', 'an unknown user is refused');
select is(tollgate.admit(jsonb_build_object('request_id', gen_random_uuid(), 'model', 'gpt-4o-mini')) ->> 'code',
  'invalid_request', 'a missing user is refused');
select is(pg_temp.admit((select id from ids where name = 'main'), '{"estimated_input_tokens": -5}') ->> 'code',
  'invalid_request', 'negative tokens are refused');
select is(pg_temp.admit((select id from ids where name = 'main'), '{"max_output_tokens": 12.5}') ->> 'code',
  'invalid_request', 'a fractional max_output_tokens is refused');
select is(pg_temp.admit((select id from ids where name = 'main'), '{"estimated_cost_usd": 5000}') ->> 'code',
  'invalid_request', 'an absurd estimate is refused');
select is(pg_temp.admit((select id from ids where name = 'main'), '{"model": ""}') ->> 'code',
  'invalid_request', 'an empty model is refused');
select is((select count(*)::integer from tollgate.rejections where layer = 'request' and code = 'invalid_request'), 8,
  'each refusal is logged as a rejection of layer `request`');
select is((select count(*)::integer from public.api_usage where user_id = (select id from ids where name = 'main')), 0,
  'refused requests reserve nothing');

-- ----------------------------------------------------------------------------
-- Layers 1-3: the feature, the anomaly breaker
-- ----------------------------------------------------------------------------
insert into t values ('unknown', pg_temp.admit((select id from ids where name = 'free'), '{"feature": "nope"}'));
select is((select a ->> 'code' from t where name = 'unknown'), 'unknown_feature', 'an unknown feature is refused');
select is((select jsonb_build_array(a #> '{tokens,daily,reserved}', a #> '{tokens,daily,remaining}', a #> '{spend,reserved_usd}',
    jsonb_typeof(a -> 'windows'))
  from t where name = 'unknown'),
  '[200, 99800, 0.001, "array"]'::jsonb, 'a refusal still reports the user''s limits, as numbers');
select is(pg_temp.admit((select id from ids where name = 'main'), '{"feature": "only-mini", "model": "gpt-4o"}') ->> 'code',
  'model_not_allowed', 'a model the feature does not allow is refused');
insert into t values ('paused', pg_temp.admit((select id from ids where name = 'main'), '{"feature": "off"}'));
select is((select array[a ->> 'layer', a ->> 'code', a ->> 'message'] from t where name = 'paused'),
  array['feature', 'feature_paused', 'Feature "off" is paused: maintenance.'], 'a paused feature is refused, with the reason');
update tollgate.gateway_state set anomaly_paused = true, anomaly_reason = 'spend 4x baseline', anomaly_paused_since = now();
insert into t values ('anomaly', pg_temp.admit((select id from ids where name = 'main')));
select is((select array[a ->> 'layer', a ->> 'code'] from t where name = 'anomaly'), array['anomaly', 'feature_paused'],
  'while the anomaly breaker is on, normal features are refused');
select is(pg_temp.admit((select id from ids where name = 'main'), '{"feature": "crit"}') ->> 'allowed', 'true',
  'while the anomaly breaker is on, critical features still run');
update tollgate.gateway_state set anomaly_paused = false, anomaly_reason = null, anomaly_paused_since = null;

-- ----------------------------------------------------------------------------
-- Layer 4: budget hard caps
-- ----------------------------------------------------------------------------
insert into tollgate.budgets (scope, feature, monthly_limit_usd, hard_cap) values
  ('feature', 'metered', 0.0015, true),
  ('feature', 'crit-metered', 0.0015, true),
  ('feature', 'soft', 0.0015, false);
select is(pg_temp.admit((select id from ids where name = 'main'), '{"feature": "metered"}') ->> 'allowed', 'true',
  'a request within the feature''s budget is admitted');
insert into t values ('over', pg_temp.admit((select id from ids where name = 'main'), '{"feature": "metered"}'));
select is((select array[a ->> 'layer', a ->> 'code'] from t where name = 'over'), array['budget', 'budget_exceeded'],
  'a request whose estimate would pass the hard cap is refused');
select ok((select (a ->> 'retry_after_seconds')::integer between 1 and 2678400 from t where name = 'over'),
  'budget_exceeded says when the month resets');
select is(pg_temp.admit((select id from ids where name = 'main'), '{"feature": "crit-metered"}') ->> 'allowed', 'true',
  'critical work passes a hard cap that exempts it ...');
select is(pg_temp.admit((select id from ids where name = 'main'), '{"feature": "crit-metered"}') ->> 'allowed', 'true',
  '... even past the limit');
select is((select count(*)::integer from (select pg_temp.admit((select id from ids where name = 'main'), '{"feature": "soft"}')
  ->> 'allowed' as allowed from generate_series(1, 3)) as x where allowed = 'true'), 3,
  'a budget without a hard cap only alerts: all three requests pass');

-- ----------------------------------------------------------------------------
-- Budget shards and leases: a hard cap without one row shared by every request
-- ----------------------------------------------------------------------------
-- This session reserves on its shard (pg_backend_pid() % 16); other sessions' shards
-- are written by hand.
insert into tollgate.features (name, priority, allowed_models, cache_ttl_seconds) values ('leased', 'normal', null, 0);
insert into tollgate.budgets (scope, feature, monthly_limit_usd, hard_cap) values ('feature', 'leased', 0.1, true);
create temp table lease as
select b.id as budget_id, date_trunc('month', now() at time zone 'UTC')::date as month,
  (pg_backend_pid() % 16)::smallint as mine, ((pg_backend_pid() + 1) % 16)::smallint as other,
  ((pg_backend_pid() + 2) % 16)::smallint as third
from tollgate.budgets as b where b.feature = 'leased';
create function pg_temp.shards()
returns table (shard text, reserved numeric, leased numeric)
language sql
as $$
  select case p.shard when l.mine then 'mine' when l.other then 'other' else 'third' end, p.reserved_total_usd,
    p.leased_usd
  from tollgate.budget_periods as p join lease as l on l.budget_id = p.budget_id and l.month = p.period_start
  order by 1
$$;

insert into t values ('lease 1', pg_temp.admit((select id from ids where name = 'main'), '{"feature": "leased"}'));
select is((select a -> 'reserved' ->> 'estimated_cost_usd' from t where name = 'lease 1'), '0.001000',
  'the lease tests reserve 0.001 a request');
select results_eq('select * from pg_temp.shards()', $$values ('mine', 0.001, 0.001 + 0.003093)$$,
  'a shard''s first request leases it its estimate and 1/32 of what the limit leaves (0.099 / 32, to the micro-dollar)');
select is(pg_temp.admit((select id from ids where name = 'main'), '{"feature": "leased"}') ->> 'allowed', 'true',
  'the next request ...');
select results_eq('select * from pg_temp.shards()', $$values ('mine', 0.002, 0.004093)$$,
  '... reserves within the lease: no new one');

insert into tollgate.budget_periods (budget_id, period_start, shard, reserved_total_usd, leased_usd)
select budget_id, month, other, 0.01, 0.045 from lease union all select budget_id, month, third, 0.01, 0.045 from lease;
update tollgate.budget_periods as p set leased_usd = p.reserved_total_usd
from lease as l where p.budget_id = l.budget_id and p.shard = l.mine;
select is(pg_temp.admit((select id from ids where name = 'main'), '{"feature": "leased"}') ->> 'allowed', 'true',
  'a request its shard''s lease cannot take ...');
select results_eq('select * from pg_temp.shards()',
  $$values ('mine', 0.003, 0.003 + trunc((0.1 - 0.092 - 0.001) / 32, 6)), ('other', 0.01, 0.045), ('third', 0.01, 0.045)$$,
  '... leases again from what the shards leave of the limit, theirs untouched');

update tollgate.budget_periods as p set leased_usd = 0.0485
from lease as l where p.budget_id = l.budget_id and p.shard in (l.other, l.third);
update tollgate.budget_periods as p set leased_usd = p.reserved_total_usd
from lease as l where p.budget_id = l.budget_id and p.shard = l.mine;
select is(pg_temp.admit((select id from ids where name = 'main'), '{"feature": "leased"}') ->> 'allowed', 'true',
  'when the leases held add up past the limit, a request that fits what is reserved ...');
select results_eq('select * from pg_temp.shards()',
  $$values ('mine', 0.004, 0.004 + trunc((0.1 - 0.023 - 0.001) / 32, 6)), ('other', 0.01, 0.01), ('third', 0.01, 0.01)$$,
  '... is admitted after every unused lease was taken back');

update tollgate.budget_periods as p set reserved_total_usd = 0.085, leased_usd = 0.085
from lease as l where p.budget_id = l.budget_id and p.shard = l.other;
update tollgate.budget_periods as p set leased_usd = p.reserved_total_usd
from lease as l where p.budget_id = l.budget_id and p.shard = l.mine;
select is(pg_temp.admit((select id from ids where name = 'main'), '{"feature": "leased"}') ->> 'allowed', 'true',
  'a request that takes the budget to exactly its limit is admitted ...');
select results_eq('select * from pg_temp.shards()',
  $$values ('mine', 0.005, 0.005), ('other', 0.085, 0.085), ('third', 0.01, 0.01)$$,
  '... leasing just its estimate');
select is(tollgate.lease_budget((select budget_id from lease), (select month from lease), (select mine from lease), 0.000001,
  now()), false, 'past the limit, lease_budget refuses even a micro-dollar ...');
select is(tollgate.lease_budget((select budget_id from lease), (select month from lease), (select mine from lease), 0,
  now()), false, '... and nothing at all once the limit is reached');
select results_eq('select * from pg_temp.shards()',
  $$values ('mine', 0.005, 0.005), ('other', 0.085, 0.085), ('third', 0.01, 0.01)$$, '... writing nothing');

update tollgate.budget_periods as p set leased_usd = 0.05
from lease as l where p.budget_id = l.budget_id and p.shard = l.third;
update tollgate.budgets set monthly_limit_usd = 0.2 where feature = 'leased';
select results_eq('select * from pg_temp.shards()',
  $$values ('mine', 0.005, 0.005), ('other', 0.085, 0.085), ('third', 0.01, 0.01)$$,
  'a changed limit takes back every unused lease');
select is(tollgate.lease_budget((select budget_id from lease), (select month from lease), (select mine from lease), 0.05,
  now()), true, 'the next lease is worked out against the new limit');
select results_eq('select * from pg_temp.shards()',
  $$values ('mine', 0.055, 0.055 + trunc((0.2 - 0.1 - 0.05) / 32, 6)), ('other', 0.085, 0.085), ('third', 0.01, 0.01)$$,
  '... the shard holding the estimate and 1/32 of what the new limit leaves');

-- ----------------------------------------------------------------------------
-- Layer 5: the throttle
-- ----------------------------------------------------------------------------
update tollgate.gateway_state set throttled = true, throttle_reason = '90% of the monthly budget', throttled_since = now();
select is(pg_temp.admit((select id from ids where name = 'main'), '{"feature": "bg"}') ->> 'code', 'throttled',
  'while throttled, background features are refused');
insert into t values ('restricted', pg_temp.admit((select id from ids where name = 'main'), '{"model": "gpt-4o", "max_output_tokens": 2000}'));
select is((select a -> 'restricted' from t where name = 'restricted'),
  '{"model": "gpt-4o-mini", "max_tokens": 256, "reason": "throttle"}'::jsonb,
  'while throttled, normal features run in restricted mode: the cheaper model, a lower max_tokens');
select is((select array[a ->> 'allowed', a ->> 'layer', a ->> 'model', a #>> '{route,0,model}'] from t where name = 'restricted'),
  array['true', 'throttle', 'gpt-4o-mini', 'gpt-4o-mini'], 'the restricted request is admitted and routed to the cheaper model');
select is(pg_temp.admit((select id from ids where name = 'main'), '{"feature": "crit", "model": "gpt-4o"}') -> 'restricted',
  'null'::jsonb, 'while throttled, critical features run as usual');
update tollgate.gateway_state set throttled = false, throttle_reason = null, throttled_since = null;

-- ----------------------------------------------------------------------------
-- Layer 6: the tier's sliding windows (free: 10 per minute, 20 per hour)
-- ----------------------------------------------------------------------------
insert into ids values ('windowed', pg_temp.new_user('windowed@test'));
select is((select count(*)::integer from generate_series(1, 10) as g
  where pg_temp.admit((select id from ids where name = 'windowed')) ->> 'allowed' = 'true'), 10,
  'ten requests in a minute are admitted');
insert into t values ('limited', pg_temp.admit((select id from ids where name = 'windowed')));
select is((select array[a ->> 'layer', a ->> 'code'] from t where name = 'limited'), array['user_window', 'rate_limited'],
  'the eleventh is refused by the minute window');
select ok((select (a ->> 'retry_after_seconds')::integer between 1 and 60 from t where name = 'limited'),
  'it may retry within the minute');
select is((select a #> '{windows,0,remaining}' from t where name = 'limited'), '0'::jsonb, 'nothing remains in the minute window');
update public.api_usage set created_at = created_at - interval '2 minutes' where user_id = (select id from ids where name = 'windowed');
select is((select count(*)::integer from generate_series(1, 10) as g
  where pg_temp.admit((select id from ids where name = 'windowed')) ->> 'allowed' = 'true'), 10,
  'two minutes later, ten more are admitted');
insert into t values ('hourly', pg_temp.admit((select id from ids where name = 'windowed')));
select ok((select a ->> 'code' = 'rate_limited' and (a ->> 'retry_after_seconds')::integer between 3300 and 3480 from t where name = 'hourly'),
  'the 21st in the hour is refused by the hour window, until the oldest leaves it');

-- ----------------------------------------------------------------------------
-- Layer 7: token quotas restrict, the cost cap refuses (seed 001)
-- ----------------------------------------------------------------------------
insert into ids values ('quota', pg_temp.new_user('quota@test'));
insert into tollgate.user_plans (user_id, tier, daily_token_quota) values ((select id from ids where name = 'quota'), 'test', 1000);
insert into public.user_usage_daily (user_id, day, calls, input_tokens, output_tokens)
values ((select id from ids where name = 'quota'), (now() at time zone 'UTC')::date, 3, 850, 0);
insert into t values ('warned', pg_temp.admit((select id from ids where name = 'quota'), '{"estimated_input_tokens": 0, "max_output_tokens": 50}'));
select is((select a #>> '{warnings,0,kind}' from t where name = 'warned'), 'daily_tokens', 'at 80% of a quota the answer warns');
select is((select (a #>> '{tokens,daily,remaining}')::integer from t where name = 'warned'), 100, 'and says what remains of it');
update public.user_usage_daily set output_tokens = 150 where user_id = (select id from ids where name = 'quota');
insert into t values ('quota', pg_temp.admit((select id from ids where name = 'quota'), '{"model": "gpt-4o"}'));
select is((select array[a ->> 'allowed', a ->> 'layer', a #>> '{restricted,reason}', a ->> 'model'] from t where name = 'quota'),
  array['true', 'user_quota', 'daily_token_quota', 'gpt-4o-mini'],
  'at 100% of the daily token quota the user is served in restricted mode, not cut off');
insert into ids values ('capped', pg_temp.new_user('capped@test'));
insert into tollgate.user_plans (user_id, tier, monthly_cost_cap_usd) values ((select id from ids where name = 'capped'), 'test', 0.0015);
select is(pg_temp.admit((select id from ids where name = 'capped')) ->> 'allowed', 'true', 'within the monthly cost cap: admitted');
insert into t values ('cap', pg_temp.admit((select id from ids where name = 'capped')));
select is((select array[a ->> 'layer', a ->> 'code'] from t where name = 'cap'), array['user_cost_cap', 'cost_cap_exceeded'],
  'past the monthly cost cap: refused (the cap is hard)');
select is((select (a #>> '{spend,cap_usd}')::numeric from t where name = 'cap'), 0.0015, 'the answer shows the cap');

-- ----------------------------------------------------------------------------
-- Dry runs and retried admissions
-- ----------------------------------------------------------------------------
insert into ids values ('dry', pg_temp.test_user('dry@test'));
insert into t values ('dry', pg_temp.admit((select id from ids where name = 'dry'), '{"dry_run": true}'));
select is((select array[a ->> 'allowed', a ->> 'dry_run', a #>> '{reserved,estimated_tokens}'] from t where name = 'dry'),
  array['true', 'true', '200'], 'a dry run decides and shows the estimate ...');
select is((select count(*)::integer from public.api_usage where user_id = (select id from ids where name = 'dry'))
  + (select count(*)::integer from public.user_usage_daily where user_id = (select id from ids where name = 'dry')), 0,
  '... and reserves nothing');
insert into t values ('first', tollgate.admit(jsonb_build_object('request_id', 'aaaaaaaa-0000-4000-8000-000000000001',
  'user_id', (select id from ids where name = 'dry'), 'model', 'gpt-4o-mini', 'estimated_cost_usd', 0.002)));
insert into t values ('again', tollgate.admit(jsonb_build_object('request_id', 'aaaaaaaa-0000-4000-8000-000000000001',
  'user_id', (select id from ids where name = 'dry'), 'model', 'gpt-4o-mini', 'estimated_cost_usd', 0.002)));
select is((select array[a ->> 'allowed', a ->> 'duplicate', a #>> '{reserved,estimated_cost_usd}'] from t where name = 'again'),
  array['true', 'true', '0.002000'], 'admitting the same request id again returns its reservation ...');
select is((select count(*)::integer from public.api_usage where request_id = 'aaaaaaaa-0000-4000-8000-000000000001'), 1,
  '... without reserving twice');
select is(tollgate.admit(jsonb_build_object('request_id', 'aaaaaaaa-0000-4000-8000-000000000001',
  'user_id', (select id from ids where name = 'main'), 'model', 'gpt-4o-mini')) ->> 'message',
  'Invalid request: request_id was already used.', 'another user cannot reuse a request id');

-- ----------------------------------------------------------------------------
-- Routes, price overrides, circuit breakers
-- ----------------------------------------------------------------------------
select is(pg_temp.admit((select id from ids where name = 'main'), '{"model": "claude-3-7-sonnet"}') -> 'route',
  '[{"provider": "anthropic", "model": "claude-3-7-sonnet", "state": "closed", "probe": false, "key": null}]'::jsonb,
  'a model without a route goes to Anthropic when its name starts with claude ...');
select is(pg_temp.admit((select id from ids where name = 'main'), '{"model": "o3-mini"}') #>> '{route,0,provider}', 'openai',
  '... and to OpenAI otherwise');
insert into tollgate.model_prices (provider, model, input_per_mtok, output_per_mtok, cached_input_per_mtok)
values ('openai', 'gpt-4o-mini', 0.15, 0.60, 0.075);
insert into t values ('priced', pg_temp.admit((select id from ids where name = 'main'),
  '{"model": "gpt-4o-mini", "estimated_input_tokens": 1000, "max_output_tokens": 500}'));
select is((select (a #>> '{reserved,estimated_cost_usd}')::numeric from t where name = 'priced'), 0.000450,
  'an operator''s price replaces the function''s estimate: 1000 x 0.15 + 500 x 0.60 micro-dollars');
select is((select a -> 'prices' from t where name = 'priced'),
  '[{"provider": "openai", "model": "gpt-4o-mini", "input_per_mtok": 0.150000, "output_per_mtok": 0.600000,
     "cached_input_per_mtok": 0.075000, "cache_write_per_mtok": null}]'::jsonb,
  'the answer carries the price overrides of the route');
insert into tollgate.provider_health (provider, model, state, consecutive_failures, opened_at)
values ('openai', 'gpt-4o', 'open', 3, now() - interval '2 minutes'),
       ('anthropic', 'claude-sonnet-4-6', 'open', 3, clock_timestamp());
insert into t values ('probe1', pg_temp.admit((select id from ids where name = 'main'), '{"model": "gpt-4o"}'));
insert into t values ('probe2', pg_temp.admit((select id from ids where name = 'main'), '{"model": "gpt-4o"}'));
select is((select a -> 'route' from t where name = 'probe1'),
  '[{"provider": "openai", "model": "gpt-4o", "state": "half_open", "probe": true, "key": null},
    {"provider": "anthropic", "model": "claude-sonnet-4-6", "state": "open", "probe": false, "key": null}]'::jsonb,
  'after the cooldown, one request is granted the half-open probe; a breaker still cooling down stays open');
select is((select a #> '{route,0}' from t where name = 'probe2'),
  '{"provider": "openai", "model": "gpt-4o", "state": "open", "probe": false, "key": null}'::jsonb,
  'the next request sees the breaker open while the probe is in flight');

-- ----------------------------------------------------------------------------
-- The response cache
-- ----------------------------------------------------------------------------
insert into tollgate.response_cache (cache_key, feature, provider, model, response, cost_usd, expires_at)
values ('k1', 'cached', 'openai', 'gpt-4o-mini', '{"text": "hello"}', 0.000321, now() + interval '5 minutes');
insert into t values ('hit', pg_temp.admit((select id from ids where name = 'main'), '{"feature": "cached", "cache_key": "k1"}'));
select is((select a #> '{cached,response}' from t where name = 'hit'), '{"text": "hello"}'::jsonb,
  'a fresh cache entry is returned');
select is((select array[(a #>> '{reserved,estimated_cost_usd}')::numeric, u.estimated_cost, u.cached::integer]
  from t join public.api_usage as u on u.request_id = (t.a ->> 'request_id')::uuid where t.name = 'hit'),
  array[0, 0, 1]::numeric[], 'a cache hit reserves no money (it still counts in the windows)');
select is(pg_temp.admit((select id from ids where name = 'main'), '{"feature": "cached", "cache_key": "k1", "cache_ttl_seconds": 0}')
  -> 'cached', 'null'::jsonb, 'a request can turn the cache off');

-- ----------------------------------------------------------------------------
-- Anonymous users, and tollgate.usage()
-- ----------------------------------------------------------------------------
select is(pg_temp.admit(pg_temp.new_user('anon1@test'), '{"is_anonymous": true}') ->> 'tier', 'anonymous',
  'an anonymous sign-in (per the JWT) is on the `anonymous` tier');
select is(pg_temp.admit(pg_temp.new_user('anon2@test', anonymous => true)) ->> 'tier', 'anonymous',
  'auth.users.is_anonymous counts even if the request says otherwise');
select is((select jsonb_build_array(u -> 'tier', u #> '{windows,0,remaining}', u #> '{windows,1,remaining}')
  from tollgate.usage((select id from ids where name = 'free')) as u),
  '["free", 9, 19]'::jsonb, 'tollgate.usage() shows a user''s tier and what remains, reserving nothing');

select is(tollgate.models_for('only-mini'), array['gpt-4o-mini'], 'models_for: a feature''s allowed models ...');
select ok(tollgate.models_for('default') @> array['gpt-4o-mini', 'claude-sonnet-4-6']
  and cardinality(tollgate.models_for('nope')) = 0, '... else every routed model; nothing for an unknown feature');

select * from finish();
rollback;
