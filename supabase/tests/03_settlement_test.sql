-- ============================================================================
-- Settlement: tollgate.settle writes exactly one call row per request, completes the
-- reservation, moves the estimate to actual spend in every rollup, is idempotent,
-- corrects expired reservations, feeds the circuit breakers and the cache, and
-- refuses bad input with a clear error and no row. tollgate.abandon takes back a
-- request the function refused after its admission got no answer.
-- ============================================================================
begin;
select plan(65);

\ir helpers.psql

-- Admits a request (estimate: 100 + 100 tokens, 0.001 USD) and returns its id.
create function pg_temp.reserve(user_id uuid, extra jsonb default '{}')
returns uuid
language sql
as $$
  select (tollgate.admit(jsonb_build_object(
    'request_id', gen_random_uuid(), 'user_id', user_id, 'model', 'gpt-4o-mini',
    'estimated_input_tokens', 100, 'max_output_tokens', 100, 'estimated_cost_usd', 0.001) || extra) ->> 'request_id')::uuid
$$;

-- Settles it with the provider's usage (120 in, 80 out, 0.000066 USD) and `extra` merged over it.
create function pg_temp.settle(request_id uuid, user_id uuid, extra jsonb default '{}')
returns jsonb
language sql
as $$
  select tollgate.settle(jsonb_build_object(
    'request_id', request_id, 'user_id', user_id, 'provider', 'openai', 'model', 'gpt-4o-mini',
    'status', 'success', 'input_tokens', 120, 'output_tokens', 80, 'latency_ms', 640, 'cost_usd', 0.000066) || extra)
$$;

insert into tollgate.tiers (name, max_output_tokens) values ('test', 4096);
insert into tollgate.tier_windows (tier, name, window_seconds, max_requests) values ('test', 'minute', 60, 1000);
update tollgate.budgets set monthly_limit_usd = 1000 where scope = 'global';

create temporary table ids (name text primary key, id uuid) on commit drop;
create temporary table r (name text primary key, a jsonb) on commit drop;
insert into ids values ('user', pg_temp.new_user('settle@test', 'test'));
insert into ids values ('req1', pg_temp.reserve((select id from ids where name = 'user')));

-- ----------------------------------------------------------------------------
-- A first settlement
-- ----------------------------------------------------------------------------
insert into r values ('first', pg_temp.settle((select id from ids where name = 'req1'), (select id from ids where name = 'user'),
  '{"attempts_detail": [{"provider": "openai", "model": "gpt-4o-mini", "ok": true, "status": 200}]}'));
select is((select a from r where name = 'first'),
  jsonb_build_object('settled', true, 'duplicate', false, 'late', false, 'request_id', (select id from ids where name = 'req1'),
    'status', 'success', 'cost_usd', 0.000066),
  'the first settlement records the call');
select results_eq(
  $$select c.user_id, c.feature, c.provider, c.model, c.input_tokens, c.output_tokens, c.latency_ms, c.estimated_cost,
      c.cached, c.status, c.attempts::integer, c.priced, c.created_at = u.created_at
    from public.ai_api_calls as c join public.api_usage as u using (request_id)
    where c.request_id = (select id from ids where name = 'req1')$$,
  $$select (select id from ids where name = 'user'), 'default'::text, 'openai'::text, 'gpt-4o-mini'::text, 120, 80, 640,
      0.000066::numeric(10,6), false, 'success'::text, 1, true, true$$,
  'the ai_api_calls row has the seed''s columns, dated at admission');
select results_eq(
  $$select status, tokens_used, estimated_cost, settled_at is not null from public.api_usage
    where request_id = (select id from ids where name = 'req1')$$,
  $$values ('settled'::text, 200, 0.000066::numeric(10,6), true)$$,
  'the reservation is completed with the actual tokens and cost');
select results_eq(
  $$select calls, input_tokens, output_tokens, cost_usd, reserved_tokens, reserved_cost_usd from public.user_usage_daily
    where user_id = (select id from ids where name = 'user')$$,
  $$values (1, 120::bigint, 80::bigint, 0.000066::numeric, 0::bigint, 0::numeric)$$,
  'the user''s day: the reservation released, the actual usage added');
select results_eq(
  $$select spent_usd, reserved_usd, calls from public.budget_status where scope = 'global'$$,
  $$values (0.000066::numeric, 0::numeric, 1::bigint)$$,
  'the global budget: the estimate released, the actual cost spent');
select results_eq(
  $$select sum(calls)::integer, sum(input_tokens)::integer, sum(output_tokens)::integer, sum(cost_usd), sum(success_calls)::integer
    from tollgate.usage_daily where provider = 'openai' and model = 'gpt-4o-mini'$$,
  $$values (1, 120, 80, 0.000066::numeric, 1)$$,
  'the daily rollup counts it');

-- ----------------------------------------------------------------------------
-- Idempotency
-- ----------------------------------------------------------------------------
select is(pg_temp.settle((select id from ids where name = 'req1'), (select id from ids where name = 'user'), '{"cost_usd": 5}'),
  jsonb_build_object('settled', false, 'duplicate', true, 'late', false, 'request_id', (select id from ids where name = 'req1'),
    'status', null, 'cost_usd', null),
  'settling the same request again is a no-op that says so');
select is((select count(*)::integer from public.ai_api_calls where request_id = (select id from ids where name = 'req1')), 1,
  'still exactly one call row');
select is((select sum(cost_usd) from tollgate.usage_daily), 0.000066::numeric, 'and the rollups did not move');

-- ----------------------------------------------------------------------------
-- Every field of a rich settlement lands where it belongs
-- ----------------------------------------------------------------------------
insert into ids values ('req2', pg_temp.reserve((select id from ids where name = 'user')));
select is(pg_temp.settle((select id from ids where name = 'req2'), (select id from ids where name = 'user'),
  '{"provider": "anthropic", "model": "claude-haiku-4-5", "input_tokens": 1000, "cached_input_tokens": 600,
    "cache_write_tokens": 100, "output_tokens": 300, "reasoning_tokens": 120, "attempts": 3,
    "fallback_from": "openai/gpt-4o-mini", "endpoint": "chat.completions", "streamed": true, "cost_usd": "0.002345",
    "priced": false}') ->> 'settled', 'true', 'a settlement with every optional field');
select results_eq(
  $$select provider, model, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens,
      attempts::integer, fallback_from, endpoint, streamed, estimated_cost, priced
    from public.ai_api_calls where request_id = (select id from ids where name = 'req2')$$,
  $$values ('anthropic'::text, 'claude-haiku-4-5'::text, 1000, 600, 100, 300, 120, 3, 'openai/gpt-4o-mini'::text,
      'chat.completions'::text, true, 0.002345::numeric(10,6), false)$$,
  'token details, attempts, fallback, endpoint, streaming and an exact decimal-string cost are recorded');
select results_eq(
  $$select sum(fallback_calls)::integer, sum(unpriced_calls)::integer, sum(cached_input_tokens)::integer,
      sum(reasoning_tokens)::integer
    from tollgate.usage_daily where provider = 'anthropic'$$,
  $$values (1, 1, 600, 120)$$,
  'the rollup counts the fallback, the unpriced call and the token details');

-- An error and a cache hit.
insert into ids values ('req3', pg_temp.reserve((select id from ids where name = 'user')));
select is(pg_temp.settle((select id from ids where name = 'req3'), (select id from ids where name = 'user'),
  '{"status": "error", "error_code": "provider_error", "input_tokens": 0, "output_tokens": 0, "cost_usd": 0}') ->> 'status',
  'error', 'a failed call is settled as an error');
select is((select errors from public.user_usage_daily where user_id = (select id from ids where name = 'user')), 1,
  'the user''s day counts the error');
insert into ids values ('req4', pg_temp.reserve((select id from ids where name = 'user')));
select is(pg_temp.settle((select id from ids where name = 'req4'), (select id from ids where name = 'user'),
  '{"cached": true, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0, "saved_cost_usd": 0.000321}') ->> 'settled',
  'true', 'a cache hit is settled');
select results_eq(
  $$select sum(cache_hits)::integer, sum(saved_cost_usd) from tollgate.usage_daily$$,
  $$values (1, 0.000321::numeric)$$,
  'the rollup counts the cache hit and the cost it saved');

-- ----------------------------------------------------------------------------
-- Bad input: a clear error with a SQLSTATE, and no row
-- ----------------------------------------------------------------------------
insert into ids values ('req5', pg_temp.reserve((select id from ids where name = 'user')));
create temporary table before_errors on commit drop as select count(*) as n from public.ai_api_calls;
select throws_ok(
  format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req5'), (select id from ids where name = 'user'),
    '{"input_tokens": -1}'),
  '22023', 'tollgate.settle: input_tokens must be a whole number from 0 to 10,000,000', 'negative tokens are refused');
select throws_ok(
  format('select tollgate.settle(%L)', jsonb_build_object('request_id', (select id from ids where name = 'req5'),
    'provider', 'openai', 'model', 'gpt-4o-mini', 'status', 'success', 'input_tokens', 1, 'output_tokens', 1,
    'latency_ms', 1, 'cost_usd', 0)),
  '22023', 'tollgate.settle: user_id must be a UUID (the reservation''s user)', 'a settlement without a user is refused');
select throws_ok(
  format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req5'), (select id from ids where name = 'user'),
    '{"cost_usd": 1e9}'),
  '22023', 'tollgate.settle: cost_usd must be a number of US dollars from 0 to 1000', 'an absurd cost is refused');
select throws_ok(
  format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req5'), (select id from ids where name = 'user'),
    '{"output_tokens": 2e7}'),
  '22023', 'tollgate.settle: output_tokens must be a whole number from 0 to 10,000,000', 'absurd token counts are refused');
select throws_ok(
  format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req5'), (select id from ids where name = 'user'),
    '{"cached_input_tokens": 500}'),
  '22023', 'tollgate.settle: cached_input_tokens + cache_write_tokens must not exceed input_tokens (they are part of it)',
  'cached tokens larger than the input are refused');
select throws_ok(
  format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req5'), (select id from ids where name = 'user'),
    '{"reasoning_tokens": 81}'),
  '22023', 'tollgate.settle: reasoning_tokens must be a whole number from 0 to output_tokens (they are part of it)',
  'reasoning tokens larger than the output are refused');
select throws_ok(
  format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req5'), (select id from ids where name = 'user'),
    '{"status": "expired"}'),
  '22023', 'tollgate.settle: status must be one of success, error, timeout, client_closed',
  'only the expiry job may record `expired`');
select throws_ok(
  format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req5'), (select id from ids where name = 'user'),
    '{"attempts_detail": [{"provider": "openai", "ok": "yes"}]}'),
  '22023', null, 'a malformed attempt is refused');
select throws_ok(
  format('select pg_temp.settle(%L, %L)', gen_random_uuid(), (select id from ids where name = 'user')),
  'P0002', null, 'a request that was never admitted is refused');
select throws_ok(
  format('select pg_temp.settle(%L, %L)', (select id from ids where name = 'req5'), gen_random_uuid()),
  '22023', null, 'another user cannot settle the request');
select throws_ok(
  format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req5'), (select id from ids where name = 'user'),
    '{"feature": "other"}'),
  '22023', null, 'a settlement cannot move the call to another feature');
select is((select count(*) from public.ai_api_calls), (select n from before_errors), 'no refused settlement wrote a row');
select is((select status from public.api_usage where request_id = (select id from ids where name = 'req5')), 'reserved',
  'and the reservation is still open');

-- ----------------------------------------------------------------------------
-- Circuit breakers (seed 000: 3 consecutive errors open it)
-- ----------------------------------------------------------------------------
select is(pg_temp.settle((select id from ids where name = 'req5'), (select id from ids where name = 'user'),
  '{"attempts_detail": [{"provider": "openai", "model": "gpt-4o", "ok": false, "status": 500},
                        {"provider": "openai", "model": "gpt-4o", "ok": false, "status": 503},
                        {"provider": "openai", "model": "gpt-4o-mini", "ok": true, "status": 200}]}') ->> 'settled',
  'true', 'a settlement reports two failed attempts and a success on the fallback');
select results_eq(
  $$select state, consecutive_failures, last_status from tollgate.provider_health where provider = 'openai' and model = 'gpt-4o'$$,
  $$values ('closed'::text, 2, 503)$$,
  'two consecutive failures: still closed, counted');
select is((select count(*)::integer from tollgate.provider_health where model = 'gpt-4o-mini'), 0,
  'a success on a healthy provider writes nothing');
insert into ids values ('req6', pg_temp.reserve((select id from ids where name = 'user')));
select lives_ok(format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req6'),
  (select id from ids where name = 'user'),
  '{"status": "timeout", "attempts_detail": [{"provider": "openai", "model": "gpt-4o", "ok": false, "status": null}]}'),
  'a third failure (a timeout) is reported');
select results_eq(
  $$select state, consecutive_failures, opened_at is not null from tollgate.provider_health
    where provider = 'openai' and model = 'gpt-4o'$$,
  $$values ('open'::text, 3, true)$$,
  'the third consecutive failure opens the breaker');
update tollgate.provider_health set state = 'half_open', probe_started_at = now(), opened_at = now() - interval '1 hour'
where provider = 'openai' and model = 'gpt-4o';
insert into ids values ('req7', pg_temp.reserve((select id from ids where name = 'user')));
select lives_ok(format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req7'),
  (select id from ids where name = 'user'),
  '{"status": "error", "attempts_detail": [{"provider": "openai", "model": "gpt-4o", "ok": false, "status": 502}]}'),
  'the half-open probe fails');
select results_eq(
  $$select state, opened_at > now() - interval '1 minute' from tollgate.provider_health where provider = 'openai' and model = 'gpt-4o'$$,
  $$values ('open'::text, true)$$,
  'a failed probe re-opens the breaker for a full cooldown');
insert into ids values ('req8', pg_temp.reserve((select id from ids where name = 'user')));
select lives_ok(format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req8'),
  (select id from ids where name = 'user'),
  '{"model": "gpt-4o", "attempts_detail": [{"provider": "openai", "model": "gpt-4o", "ok": true, "status": 200}]}'),
  'a later attempt succeeds');
select results_eq(
  $$select state, consecutive_failures, opened_at is null from tollgate.provider_health where provider = 'openai' and model = 'gpt-4o'$$,
  $$values ('closed'::text, 0, true)$$,
  'a success closes the breaker');

-- ----------------------------------------------------------------------------
-- The response cache
-- ----------------------------------------------------------------------------
insert into ids values ('req9', pg_temp.reserve((select id from ids where name = 'user')));
select lives_ok(format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req9'),
  (select id from ids where name = 'user'),
  '{"cache_entry": {"key": "prompt-hash-1", "response": {"text": "hi"}, "ttl_seconds": 600}}'),
  'a successful call can fill the cache');
select results_eq(
  $$select response, cost_usd, expires_at > now() + interval '9 minutes' from tollgate.response_cache where cache_key = 'prompt-hash-1'$$,
  $$values ('{"text": "hi"}'::jsonb, 0.000066::numeric(10,6), true)$$,
  'the entry keeps the response, what it cost, and its expiry');
insert into ids values ('req10', pg_temp.reserve((select id from ids where name = 'user')));
select lives_ok(format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 'req10'),
  (select id from ids where name = 'user'),
  '{"status": "error", "cache_entry": {"key": "prompt-hash-2", "response": {"text": "oops"}, "ttl_seconds": 600}}'),
  'a failed call offering a cache entry still settles');
select is((select count(*)::integer from tollgate.response_cache where cache_key = 'prompt-hash-2'), 0,
  'but a failed call is never cached');

-- ----------------------------------------------------------------------------
-- A settlement after the expiry job charged the estimate
-- ----------------------------------------------------------------------------
insert into ids values ('late', pg_temp.reserve((select id from ids where name = 'user'), '{"model": "claude-haiku-4-5"}'));
update public.api_usage set created_at = created_at - interval '11 minutes' where request_id = (select id from ids where name = 'late');
select is(tollgate.expire_reservations(), 1, 'the expiry job charges the stale reservation at its estimate');
select results_eq(
  $$select status, provider, input_tokens, output_tokens, estimated_cost from public.ai_api_calls
    where request_id = (select id from ids where name = 'late')$$,
  $$values ('expired'::text, 'anthropic'::text, 100, 100, 0.001::numeric(10,6))$$,
  'an expired call row at the estimate');
insert into r values ('late', pg_temp.settle((select id from ids where name = 'late'), (select id from ids where name = 'user'),
  '{"provider": "openai", "model": "gpt-4o-mini", "fallback_from": "anthropic/claude-haiku-4-5"}'));
select is((select array[a ->> 'settled', a ->> 'late'] from r where name = 'late'), array['true', 'true'],
  'the late settlement corrects the expired call');
select results_eq(
  $$select count(*)::integer, min(status), min(provider), min(estimated_cost) from public.ai_api_calls
    where request_id = (select id from ids where name = 'late')$$,
  $$values (1, 'success'::text, 'openai'::text, 0.000066::numeric(10,6))$$,
  'still one row, now with the actual numbers');
select results_eq(
  $$select coalesce(sum(calls), 0)::integer, coalesce(sum(expired_calls), 0)::integer, coalesce(sum(cost_usd), 0)
    from tollgate.usage_daily where provider = 'anthropic' and model = 'claude-haiku-4-5'$$,
  $$values (1, 0, 0.002345::numeric)$$,
  'the rollup no longer counts the expired estimate under the model it was reserved for');
select is(pg_temp.settle((select id from ids where name = 'late'), (select id from ids where name = 'user')) ->> 'duplicate',
  'true', 'settling it a third time is a no-op');

-- ----------------------------------------------------------------------------
-- Abandoned requests: the function refused them after an admission without an answer
-- ----------------------------------------------------------------------------
insert into ids values ('abandoner', pg_temp.new_user('abandon@test', 'test'));
insert into ids values ('kept', pg_temp.reserve((select id from ids where name = 'abandoner')));
insert into ids values ('gone', pg_temp.reserve((select id from ids where name = 'abandoner')));
select is(tollgate.abandon((select id from ids where name = 'gone'), (select id from ids where name = 'abandoner')),
  'released', 'abandoning a reservation releases it');
select is((select count(*) from public.api_usage where request_id = (select id from ids where name = 'gone')),
  0::bigint, 'its reservation is gone: it counts in no window');
select is((select count(*) from public.ai_api_calls where request_id = (select id from ids where name = 'gone')),
  0::bigint, 'an abandoned request has no call row: no call was made');
select results_eq(
  $$select reserved_tokens, reserved_cost_usd from public.user_usage_daily
    where user_id = (select id from ids where name = 'abandoner')$$,
  $$values (200::bigint, 0.001::numeric)$$,
  'the user''s reserved counters keep only the other request''s estimate');
select results_eq(
  $$select user_id, released from tollgate.abandoned_requests where request_id = (select id from ids where name = 'gone')$$,
  $$select id, true from ids where name = 'abandoner'$$,
  'the abandonment is recorded');
select is(tollgate.abandon((select id from ids where name = 'gone'), (select id from ids where name = 'abandoner')),
  'abandoned', 'abandoning it again changes nothing');
select throws_ok(
  format('select pg_temp.settle(%L, %L)', (select id from ids where name = 'gone'), (select id from ids where name = 'abandoner')),
  'P0002', null, 'an abandoned request cannot be settled');
select throws_ok(
  format('select tollgate.abandon(%L, %L)', (select id from ids where name = 'kept'), (select id from ids where name = 'user')),
  '22023', null, 'another user''s request cannot be abandoned');

-- Abandoned before its admission ran: the admission, arriving later, is refused.
insert into ids values ('never', gen_random_uuid());
select is(tollgate.abandon((select id from ids where name = 'never'), (select id from ids where name = 'abandoner')),
  'refused', 'abandoning a request not admitted yet …');
select results_eq(
  format($$select a ->> 'allowed', a ->> 'code' from tollgate.admit(jsonb_build_object(
    'request_id', %L::uuid, 'user_id', %L::uuid, 'model', 'gpt-4o-mini', 'estimated_input_tokens', 100,
    'max_output_tokens', 100, 'estimated_cost_usd', 0.001)) as a$$,
    (select id from ids where name = 'never'), (select id from ids where name = 'abandoner')),
  $$values ('false', 'invalid_request')$$,
  '… refuses its admission when it arrives later, as a reuse of the id');
select results_eq(
  $$select (select count(*) from public.api_usage where request_id = (select id from ids where name = 'never')),
      (select reserved_tokens from public.user_usage_daily where user_id = (select id from ids where name = 'abandoner'))$$,
  $$values (0::bigint, 200::bigint)$$,
  'which reserves nothing');
select is(tollgate.abandon((select id from ids where name = 'req1'), (select id from ids where name = 'user')),
  'settled', 'a settled request is left as it is …');
select is((select count(*) from tollgate.abandoned_requests where request_id = (select id from ids where name = 'req1')),
  0::bigint, '… and not recorded as abandoned');

-- Settlement's plans are kept for the session, made on whatever api_usage held then: a
-- few rows here, as in a new deployment. They find each reservation by its key and
-- tuple id all the same, never by a scan of the whole table (which would then read
-- every reservation in every settlement as the table grew).
insert into ids values ('planned', pg_temp.reserve((select id from ids where name = 'user')));
create temporary table scans on commit drop as
  select seq_scan from pg_stat_xact_user_tables where relid = 'public.api_usage'::regclass;
select is(pg_temp.settle((select id from ids where name = 'planned'), (select id from ids where name = 'user')) ->> 'settled',
  'true', 'a settlement in a session whose plans were made on a near-empty api_usage …');
select is((select t.seq_scan - s.seq_scan from pg_stat_xact_user_tables as t, scans as s
    where t.relid = 'public.api_usage'::regclass), 0::bigint,
  '… scans no part of api_usage: its reservation is found by key and updated by tuple id');

-- Every rollup still equals its aggregate over the call rows.
select results_eq(
  $$select sum(calls)::integer, sum(input_tokens)::bigint, sum(output_tokens)::bigint, sum(cost_usd) from tollgate.usage_daily$$,
  $$select count(*)::integer, sum(input_tokens)::bigint, sum(output_tokens)::bigint, sum(estimated_cost) from public.ai_api_calls$$,
  'usage_daily equals the aggregate of ai_api_calls after settlements, errors, cache hits and a late correction');
select results_eq(
  $$select spent_usd, reserved_usd from public.budget_status where scope = 'global'$$,
  $$select (select sum(estimated_cost) from public.ai_api_calls),
      (select coalesce(sum(reserved_cost), 0) from public.api_usage where status = 'reserved')$$,
  'the budget''s spend equals the calls'' cost and its reservations equal the open reservations');

select * from finish();
rollback;
