-- ============================================================================
-- Batches: tollgate.admit_many and tollgate.settle_many decide each element as
-- admit() and settle() do, in order, and keep all of a batch or none of it.
-- (Batches under real concurrent connections: tests/db_admission_test.ts.)
-- ============================================================================
begin;
select plan(38);

\ir helpers.psql

-- A request for `user_id` (estimate: 100 + 100 tokens, 0.001 USD), with `extra` merged over it.
create function pg_temp.request(user_id uuid, extra jsonb default '{}')
returns jsonb
language sql
as $$
  select jsonb_build_object(
    'request_id', gen_random_uuid(), 'user_id', user_id, 'model', 'gpt-4o-mini',
    'estimated_input_tokens', 100, 'max_output_tokens', 100, 'estimated_cost_usd', 0.001) || extra
$$;

-- The settle() call for an admitted request (120 in, 80 out, 0.000066 USD).
create function pg_temp.call_for(request jsonb, extra jsonb default '{}')
returns jsonb
language sql
as $$
  select jsonb_build_object(
    'request_id', request -> 'request_id', 'user_id', request -> 'user_id', 'provider', 'openai',
    'model', 'gpt-4o-mini', 'status', 'success', 'input_tokens', 120, 'output_tokens', 80, 'latency_ms', 640,
    'cost_usd', 0.000066) || extra
$$;

insert into tollgate.tiers (name, max_output_tokens) values ('test', 4096), ('two', 4096);
insert into tollgate.tier_windows (tier, name, window_seconds, max_requests)
values ('test', 'minute', 60, 1000), ('two', 'minute', 60, 2);
update tollgate.budgets set monthly_limit_usd = 1000 where scope = 'global';

create temporary table ids (name text primary key, id uuid) on commit drop;
-- `a` and `b` are named in user id order, the order in which a batch decides them.
insert into ids
select case when row_number() over (order by u.id) = 1 then 'a' else 'b' end, u.id
from (values (pg_temp.new_user('a@test', 'test')), (pg_temp.new_user('b@test', 'test'))) as u (id);
insert into ids values ('two', pg_temp.new_user('two@test', 'two'));
create temporary table batch (position integer primary key, request jsonb) on commit drop;
create temporary table answers (position integer primary key, answer jsonb) on commit drop;

-- ----------------------------------------------------------------------------
-- admit_many
-- ----------------------------------------------------------------------------
-- Three requests of the user whose tier allows 2 a minute, around one of another
-- user, one malformed request and one dry run.
insert into batch values
  (1, pg_temp.request((select id from ids where name = 'two'))),
  (2, pg_temp.request((select id from ids where name = 'a'))),
  (3, pg_temp.request((select id from ids where name = 'two'))),
  (4, pg_temp.request((select id from ids where name = 'a'), '{"model": 42}')),
  (5, pg_temp.request((select id from ids where name = 'two'))),
  (6, pg_temp.request((select id from ids where name = 'b'), '{"dry_run": true}'));
insert into answers
select a.ordinality, a.value
from jsonb_array_elements(tollgate.admit_many((select jsonb_agg(request order by position) from batch)))
  with ordinality as a;

select is((select count(*) from answers), 6::bigint, 'admit_many answers every request');
select is(
  (select array_agg(a.answer ->> 'request_id' order by a.position) from answers as a),
  (select array_agg(b.request ->> 'request_id' order by b.position) from batch as b),
  'the answers come in the order of the requests');
select is(
  (select array_agg(coalesce(a.answer ->> 'code', 'admitted') order by a.position) from answers as a),
  array['admitted', 'admitted', 'admitted', 'invalid_request', 'rate_limited', 'admitted'],
  'each request is decided as admit() decides it: one user''s requests count one after the other, a bad one is refused alone');
select is(
  (select count(*) from public.api_usage where request_id in (select (request ->> 'request_id')::uuid from batch)),
  3::bigint,
  'the admitted requests are reserved; the refused, the malformed and the dry run are not');
select is(
  (select a.answer -> 'windows' -> 0 ->> 'remaining' from answers as a where a.position = 3),
  '0',
  'the second request of the user sees the first one''s reservation');

-- Each user's reserved counters add up the user's reservations in the batch, as lone
-- admissions would leave them.
select is(
  (select array[d.reserved_tokens, d.reserved_cost_usd] from public.user_usage_daily as d
   where d.user_id = (select id from ids where name = 'two')),
  (select array[sum(u.tokens_used), sum(u.reserved_cost)] from public.api_usage as u
   where u.user_id = (select id from ids where name = 'two')),
  'the user''s reserved counters hold the batch''s reservations of that user');

-- The same request twice in one batch: the second is a duplicate, as it would be in
-- the next batch.
truncate answers;
insert into answers
select a.ordinality, a.value
from (select pg_temp.request((select id from ids where name = 'b')) as r) as one
cross join lateral jsonb_array_elements(tollgate.admit_many(jsonb_build_array(one.r, one.r))) with ordinality as a;
select is(
  (select array_agg((a.answer ->> 'duplicate') order by a.position) from answers as a),
  array['false', 'true'],
  'a request repeated within a batch is answered as a duplicate');
select is(
  (select array[count(*), sum(u.tokens_used)] from public.api_usage as u
   where u.request_id = (select (a.answer ->> 'request_id')::uuid from answers as a where a.position = 1)),
  (select array[1, d.reserved_tokens] from public.user_usage_daily as d
   where d.user_id = (select id from ids where name = 'b')),
  '... and reserves once');

-- A request sent again in a later batch is a duplicate, as with admit().
select is(
  tollgate.admit_many(jsonb_build_array((select request from batch where position = 2))) -> 0 ->> 'duplicate',
  'true',
  'a request admitted before is answered as a duplicate and reserves nothing more');

select throws_ok($$select tollgate.admit_many('{}')$$, '22023', null, 'admit_many refuses an object');
select throws_ok($$select tollgate.admit_many('[]')$$, '22023', null, 'admit_many refuses an empty batch');
select throws_ok(
  format('select tollgate.admit_many(%L)',
    (select jsonb_agg(pg_temp.request((select id from ids where name = 'a'))) from generate_series(1, 33))),
  '22023', null, 'admit_many refuses more than 32 requests');

-- ----------------------------------------------------------------------------
-- settle_many
-- ----------------------------------------------------------------------------
-- All or nothing: a batch with one call settle() refuses keeps none of its calls.
select throws_ok(
  format('select tollgate.settle_many(%L)', jsonb_build_array(
    pg_temp.call_for((select request from batch where position = 1)),
    pg_temp.call_for((select request from batch where position = 2), '{"input_tokens": -1}'))),
  null, null, 'settle_many fails when one of its calls is refused');
select is(
  (select count(*) from public.ai_api_calls where request_id in (select (request ->> 'request_id')::uuid from batch)),
  0::bigint,
  '... and keeps none of the batch: the good call is not settled either');

select lives_ok(
  format('select tollgate.settle_many(%L)',
    (select jsonb_agg(pg_temp.call_for(b.request) order by b.position) from batch as b where b.position in (1, 2, 3))),
  'settle_many settles a batch');
select is(
  (select count(*) from public.ai_api_calls where request_id in (select (request ->> 'request_id')::uuid from batch)),
  3::bigint,
  'one ai_api_calls row per settled call');
select is(
  (select count(*) from public.api_usage
   where request_id in (select (request ->> 'request_id')::uuid from batch) and status = 'settled'),
  3::bigint,
  'every reservation of the batch is completed');
select results_eq(
  $$select d.user_id, d.calls, d.input_tokens, d.output_tokens, d.cost_usd, d.reserved_tokens, d.reserved_cost_usd
    from public.user_usage_daily as d
    where d.user_id in (select id from ids where name in ('a', 'two'))
    order by d.user_id$$,
  $$select c.user_id, count(*)::integer, sum(c.input_tokens)::bigint, sum(c.output_tokens)::bigint,
      sum(c.estimated_cost)::numeric(14,6), 0::bigint, 0::numeric(14,6)
    from public.ai_api_calls as c
    where c.user_id in (select id from ids where name in ('a', 'two'))
    group by c.user_id
    order by c.user_id$$,
  'the batch''s rollups (applied at once) equal the call rows, and every estimate is released');
select is(
  (select sum(t.calls)::integer from tollgate.usage_daily as t where t.feature = 'default' and t.day = current_date)
    - (select count(*)::integer from public.ai_api_calls as c where c.feature = 'default'
       and (c.created_at at time zone 'UTC')::date = current_date),
  0,
  'usage_daily counts every call of the batch once');
select lives_ok(
  format('select tollgate.settle_many(%L)',
    (select jsonb_agg(pg_temp.call_for(b.request) order by b.position) from batch as b where b.position in (1, 2, 3))),
  'settle_many is idempotent on the request ids');
select is(
  (select count(*) from public.ai_api_calls where request_id in (select (request ->> 'request_id')::uuid from batch)),
  3::bigint,
  '... and writes no second row');

-- What is rare goes call by call within the batch, and the batch still settles each
-- request once: the same call twice, a late call (its reservation expired), two cache
-- entries under one key, a failed attempt on another provider and a provider key.
create temporary table mixed (name text primary key, request jsonb) on commit drop;
insert into mixed
select 'r' || g, pg_temp.request((select id from ids where name = 'a')) from generate_series(1, 4) as g;
select tollgate.admit_many((select jsonb_agg(m.request order by m.name) from mixed as m));
update public.api_usage set created_at = created_at - interval '11 minutes'
where request_id = (select (request ->> 'request_id')::uuid from mixed where name = 'r4');
select is(tollgate.expire_reservations(), 1, 'a reservation of the next batch expires before it is settled');
select lives_ok(
  format('select tollgate.settle_many(%L)', jsonb_build_array(
    pg_temp.call_for((select request from mixed where name = 'r1'), '{"attempts_detail": [
      {"provider": "anthropic", "model": "claude-haiku-4-5", "ok": false, "status": 500},
      {"provider": "openai", "model": "gpt-4o-mini", "ok": true, "status": 200, "key": "batch-key"}]}'),
    pg_temp.call_for((select request from mixed where name = 'r2'),
      '{"cache_entry": {"key": "batch-cache", "response": {"text": "first"}, "ttl_seconds": 600}}'),
    pg_temp.call_for((select request from mixed where name = 'r3'),
      '{"cache_entry": {"key": "batch-cache", "response": {"text": "second"}, "ttl_seconds": 600}}'),
    pg_temp.call_for((select request from mixed where name = 'r1')),
    pg_temp.call_for((select request from mixed where name = 'r4')))),
  'settle_many settles a batch with a call repeated and a late one');
select results_eq(
  $$select m.name, c.status, c.input_tokens, c.provider_key
    from mixed as m join public.ai_api_calls as c on c.request_id = (m.request ->> 'request_id')::uuid
    order by m.name$$,
  $$values ('r1', 'success', 120, 'batch-key'), ('r2', 'success', 120, null), ('r3', 'success', 120, null),
    ('r4', 'success', 120, null)$$,
  'one call row per request, the late one corrected to its call, the answering attempt''s key on its row');
select results_eq(
  $$select sum(d.calls)::integer, sum(d.input_tokens)::bigint, sum(d.cost_usd), sum(d.reserved_tokens)::bigint,
      sum(d.reserved_cost_usd)
    from public.user_usage_daily as d where d.user_id = (select id from ids where name = 'a')$$,
  $$select count(*)::integer, sum(c.input_tokens)::bigint, sum(c.estimated_cost), 0::bigint, 0::numeric
    from public.ai_api_calls as c where c.user_id = (select id from ids where name = 'a')$$,
  'the user''s rollup equals their call rows over the days, and nothing stays reserved');
select is(
  (select h.consecutive_failures from tollgate.provider_health as h
   where h.provider = 'anthropic' and h.model = 'claude-haiku-4-5'),
  1,
  'a failed attempt counts against its breaker');
select is(
  (select array[sum(k.calls), sum(k.input_tokens)] from tollgate.provider_key_usage_daily as k
   where k.provider = 'openai' and k.label = 'batch-key'),
  array[1, 120]::numeric[],
  'the key that answered is charged once');
select is(
  (select response ->> 'text' from tollgate.response_cache where cache_key = 'batch-cache'),
  'second',
  'of two cache entries under one key, the later call''s is kept');
select throws_ok(
  format('select tollgate.settle_many(%L)', jsonb_build_array(
    pg_temp.call_for((select request from mixed where name = 'r1'),
      jsonb_build_object('user_id', (select id from ids where name = 'b'))))),
  '22023', null, 'settle_many refuses a call for another user''s reservation');

-- ----------------------------------------------------------------------------
-- Reads shared within a batch
-- ----------------------------------------------------------------------------
-- A batch reads each model's route once, and again after a request changed it: with
-- gpt-4o's breaker open past its cooldown, the first gpt-4o request takes the probe
-- and the later ones see the breaker open, as lone admissions would; gpt-4o-mini's
-- route (priced here) and gpt-4o's (not) are each their own.
insert into tollgate.provider_health (provider, model, state, consecutive_failures, opened_at)
values ('openai', 'gpt-4o', 'open', 3, now() - interval '2 minutes');
insert into tollgate.model_prices (provider, model, input_per_mtok, output_per_mtok)
values ('openai', 'gpt-4o-mini', 0.15, 0.60);
truncate answers;
insert into answers
select a.ordinality, a.value
from jsonb_array_elements(tollgate.admit_many(jsonb_build_array(
    pg_temp.request((select id from ids where name = 'a'), '{"model": "gpt-4o"}'),
    pg_temp.request((select id from ids where name = 'a')),
    pg_temp.request((select id from ids where name = 'b'), '{"model": "gpt-4o"}'),
    pg_temp.request((select id from ids where name = 'b'))))) with ordinality as a;
select is(
  (select jsonb_agg(a.answer #> '{route,0}' order by a.position) from answers as a),
  '[{"provider": "openai", "model": "gpt-4o", "state": "half_open", "probe": true, "key": null},
    {"provider": "openai", "model": "gpt-4o-mini", "state": "closed", "probe": false, "key": null},
    {"provider": "openai", "model": "gpt-4o", "state": "open", "probe": false, "key": null},
    {"provider": "openai", "model": "gpt-4o-mini", "state": "closed", "probe": false, "key": null}]'::jsonb,
  'in a batch, one request takes a half-open probe and the later ones see the breaker open');
select is(
  (select array_agg((a.answer #>> '{reserved,estimated_cost_usd}')::numeric order by a.position) from answers as a),
  array[0.001, 0.000075, 0.001, 0.000075],
  'each model''s prices are its own: gpt-4o-mini''s override (100 x 0.15 + 100 x 0.60 micro-dollars), none for gpt-4o');
select is(
  (select a.answer -> 'route' from answers as a where a.position = 4),
  tollgate.admit(pg_temp.request((select id from ids where name = 'b'), '{"dry_run": true}')) -> 'route',
  'a route used again within a batch is the route a lone admission reads');
select is(
  (select a.answer -> 'prices' from answers as a where a.position = 4),
  '[{"provider": "openai", "model": "gpt-4o-mini", "input_per_mtok": 0.150000, "output_per_mtok": 0.600000,
     "cached_input_per_mtok": null, "cache_write_per_mtok": null}]'::jsonb,
  '... with its price overrides');

-- A feature's budgets are read once per batch, and each reservation is added as it is
-- made: with room for two requests, the third of a user whose window also allows two
-- is refused at the budget layer, which comes first, as a lone admission would be.
insert into tollgate.features (name, priority, allowed_models, cache_ttl_seconds) values ('capped', 'normal', null, 0);
insert into tollgate.budgets (scope, feature, monthly_limit_usd, hard_cap) values ('feature', 'capped', 0.002, true);
insert into ids values ('three', pg_temp.new_user('three@test', 'two'));
truncate answers;
insert into answers
select a.ordinality, a.value
from jsonb_array_elements(tollgate.admit_many((
    select jsonb_agg(pg_temp.request((select id from ids where name = 'three'),
      '{"feature": "capped", "model": "o3-mini"}'))
    from generate_series(1, 3)))) with ordinality as a;
select is(
  (select array_agg(coalesce(a.answer ->> 'code', 'admitted') order by a.position) from answers as a),
  array['admitted', 'admitted', 'budget_exceeded'],
  'a batch''s reservations count in its later requests'' budget reads');
select is(
  (select a.answer ->> 'layer' from answers as a where a.position = 3),
  'budget',
  '... refused at the budget layer, before the full window');
select is(
  (select sum(p.reserved_total_usd) from tollgate.budget_periods as p
   join tollgate.budgets as b on b.id = p.budget_id where b.feature = 'capped'),
  0.002::numeric,
  'the hard cap holds the two reservations exactly');

-- A batch decides its requests in user id order (its user rollup rows are then written
-- in key order, as settle_many() writes them) and answers in the order of its requests:
-- with room for one request, the user whose id sorts first gets it, wherever its request
-- is; a request without a valid user id is decided last.
insert into tollgate.features (name, priority, allowed_models, cache_ttl_seconds) values ('capped_one', 'normal', null, 0);
insert into tollgate.budgets (scope, feature, monthly_limit_usd, hard_cap) values ('feature', 'capped_one', 0.0015, true);
insert into ids values ('u1', pg_temp.new_user('u1@test', 'two')), ('u2', pg_temp.new_user('u2@test', 'two'));
truncate batch;
insert into batch
select b.position, pg_temp.request(b.user_id, '{"feature": "capped_one", "model": "o3-mini"}' || b.extra)
from (select greatest(u1.id, u2.id) as high, least(u1.id, u2.id) as low
      from ids as u1, ids as u2 where u1.name = 'u1' and u2.name = 'u2') as u
cross join lateral (values
  (1, u.high, '{}'::jsonb),
  (2, u.low, '{"user_id": "not-a-uuid"}'::jsonb),
  (3, u.low, '{}'::jsonb)) as b (position, user_id, extra);
truncate answers;
insert into answers
select a.ordinality, a.value
from jsonb_array_elements(tollgate.admit_many((select jsonb_agg(b.request order by b.position) from batch as b)))
  with ordinality as a;
select is(
  (select array_agg(coalesce(a.answer ->> 'code', 'admitted') order by a.position) from answers as a),
  array['budget_exceeded', 'invalid_request', 'admitted'],
  'a batch is decided in user id order: the lower user id takes the room, from the last position');
select is(
  (select count(*)::integer from answers as a join batch as b using (position)
   where a.answer ->> 'request_id' = b.request ->> 'request_id'),
  3,
  '... and each answer is in its request''s position');

select * from finish();
rollback;
