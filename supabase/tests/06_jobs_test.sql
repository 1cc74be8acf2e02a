-- ============================================================================
-- Jobs: the expiry charges reservations that were never settled at their estimate
-- and releases them (nothing lost, nothing free); the pruning keeps api_usage to
-- the windows and cleans up after the cache, rejections and pg_cron. The jobs'
-- SQL is called directly: no waiting for the clock.
-- ============================================================================
begin;
select plan(25);

\ir helpers.psql

create function pg_temp.reserve(user_id uuid)
returns uuid
language sql
as $$
  select (tollgate.admit(jsonb_build_object(
    'request_id', gen_random_uuid(), 'user_id', user_id, 'model', 'claude-haiku-4-5',
    'estimated_input_tokens', 300, 'max_output_tokens', 200, 'estimated_cost_usd', 0.0025)) ->> 'request_id')::uuid
$$;

create function pg_temp.settle(request_id uuid, user_id uuid)
returns jsonb
language sql
as $$
  select tollgate.settle(jsonb_build_object(
    'request_id', request_id, 'user_id', user_id, 'provider', 'anthropic', 'model', 'claude-haiku-4-5',
    'status', 'success', 'input_tokens', 310, 'output_tokens', 90, 'latency_ms', 800, 'cost_usd', 0.00067))
$$;

insert into tollgate.tiers (name, max_output_tokens) values ('test', 4096);
insert into tollgate.tier_windows (tier, name, window_seconds, max_requests) values ('test', 'minute', 60, 1000);
update tollgate.budgets set monthly_limit_usd = 1000 where scope = 'global';

create temporary table ids (name text primary key, id uuid) on commit drop;
insert into ids values ('user', pg_temp.new_user('jobs@test', 'test'));
insert into ids values ('stale1', pg_temp.reserve((select id from ids where name = 'user')));
insert into ids values ('stale2', pg_temp.reserve((select id from ids where name = 'user')));
insert into ids values ('young', pg_temp.reserve((select id from ids where name = 'user')));
update public.api_usage set created_at = created_at - interval '11 minutes'
where request_id in (select id from ids where name like 'stale%');
update public.api_usage set created_at = created_at - interval '5 minutes'
where request_id = (select id from ids where name = 'young');

-- ----------------------------------------------------------------------------
-- expire_reservations
-- ----------------------------------------------------------------------------
select is(tollgate.expire_reservations(), 2, 'the two reservations older than ten minutes expire');
select results_eq(
  $$select status, input_tokens, output_tokens, estimated_cost, attempts::integer, error_code
    from public.ai_api_calls where request_id = (select id from ids where name = 'stale1')$$,
  $$values ('expired'::text, 300, 200, 0.0025::numeric(10,6), 0, 'reservation_expired'::text)$$,
  'each becomes an `expired` call charged at its estimate (nothing is free)');
select is((select status from public.api_usage where request_id = (select id from ids where name = 'young')), 'reserved',
  'a reservation younger than the bound is left to its function');
-- Summed over days: shortly after midnight UTC the backdated reservations belong to the day
-- before the one their reservation was added to.
select results_eq(
  $$select sum(calls)::integer, sum(input_tokens)::integer, sum(output_tokens)::integer, sum(cost_usd),
      sum(reserved_tokens)::integer, sum(reserved_cost_usd)
    from public.user_usage_daily where user_id = (select id from ids where name = 'user')$$,
  $$values (2, 600, 400, 0.005::numeric, 500, 0.0025::numeric)$$,
  'the user is charged the two estimates and only the young reservation stays reserved');
-- budget_status shows the current month only: in a month's first minutes the backdated
-- reservations belong to the month before.
select case
  when now() - (date_trunc('month', now() at time zone 'UTC') at time zone 'UTC') < interval '12 minutes'
    then skip('the backdated reservations fall in the previous month', 1)
  else results_eq(
    $$select spent_usd, reserved_usd from public.budget_status where scope = 'global'$$,
    $$values (0.005::numeric, 0.0025::numeric)$$,
    'the budget likewise: nothing leaks, nothing is lost')
  end;
select is((select sum(expired_calls)::integer from tollgate.usage_daily), 2, 'the daily rollup counts two expired calls');
select is(tollgate.expire_reservations(), 0, 'running the job again changes nothing');
select throws_ok('select tollgate.expire_reservations(interval ''5 minutes'')', '22023', null,
  'a bound shorter than the edge runtime''s 400 s wall clock is refused');
select is(tollgate.expire_reservations(interval '1 hour'), 0, 'a longer bound is accepted');

-- ----------------------------------------------------------------------------
-- prune_api_usage
-- ----------------------------------------------------------------------------
insert into ids values ('old', pg_temp.reserve((select id from ids where name = 'user')));
select lives_ok(format('select pg_temp.settle(%L, %L)', (select id from ids where name = 'old'), (select id from ids where name = 'user')),
  'a call settles');
insert into ids values ('recent', pg_temp.reserve((select id from ids where name = 'user')));
select lives_ok(format('select pg_temp.settle(%L, %L)', (select id from ids where name = 'recent'), (select id from ids where name = 'user')),
  'another call settles');
insert into ids values ('lost', pg_temp.reserve((select id from ids where name = 'user')));
-- Ages: `old` is past the longest window (an hour), `recent` is not, `lost` is a
-- reservation two hours old that nobody expired yet, `stale1` expired two hours ago,
-- `stale2` expired two days ago.
update public.api_usage set created_at = now() - interval '2 hours'
where request_id in (select id from ids where name in ('old', 'lost', 'stale1'));
update public.api_usage set created_at = now() - interval '2 days' where request_id = (select id from ids where name = 'stale2');
insert into tollgate.response_cache (cache_key, feature, provider, model, response, expires_at)
values ('gone', 'default', 'openai', 'gpt-4o-mini', '{}', now() - interval '1 second'),
       ('fresh', 'default', 'openai', 'gpt-4o-mini', '{}', now() + interval '1 hour');
insert into tollgate.rejections (created_at, layer, code) values (now() - interval '31 days', 'budget', 'budget_exceeded'),
  (now() - interval '1 day', 'budget', 'budget_exceeded');
insert into cron.job_run_details (jobid, runid, status, start_time, end_time)
values (1, 900001, 'succeeded', now() - interval '8 days', now() - interval '8 days'),
       (1, 900002, 'succeeded', now() - interval '1 day', now() - interval '1 day');
insert into tollgate.abandoned_requests (request_id, user_id, abandoned_at, released)
values (gen_random_uuid(), (select id from ids where name = 'user'), now() - interval '25 hours', false),
       (gen_random_uuid(), (select id from ids where name = 'user'), now() - interval '23 hours', true);

create temporary table pruned on commit drop as select tollgate.prune_api_usage() as counts;
select is((select counts ->> 'api_usage_settled' from pruned), '1', 'settled rows past the longest window are deleted');
select is((select array_agg(x.name order by x.name) from ids as x join public.api_usage as u on u.request_id = x.id),
  array['lost', 'recent', 'stale1', 'young'],
  'recent rows, reservations in flight and recently expired rows stay');
select is((select counts ->> 'api_usage_expired' from pruned), '1', 'expired rows are kept a day, then deleted');
select is((select count(*)::integer from public.ai_api_calls where request_id = (select id from ids where name = 'old')), 1,
  'the call log is never pruned');
select is((select array_agg(cache_key order by cache_key) from tollgate.response_cache), array['fresh'],
  'stale cache entries are deleted');
select is((select count(*)::integer from tollgate.rejections), 1, 'rejections older than 30 days are deleted');
select is((select array_agg(runid order by runid) from cron.job_run_details where runid >= 900001), array[900002::bigint],
  'cron.job_run_details older than 7 days are deleted');
select ok((select counts ? 'usage_daily_folded' from pruned), 'the pruning reports what it folded');
select results_eq($$select (select counts ->> 'abandoned_requests' from pruned), count(*) from tollgate.abandoned_requests$$,
  $$values ('1', 1::bigint)$$, 'abandoned request ids are kept a day');

-- The reservation nobody expired is still charged later.
select is(tollgate.expire_reservations(), 1, 'the next expiry run charges the forgotten reservation');
select is((select status from public.api_usage where request_id = (select id from ids where name = 'lost')), 'expired',
  'its window-log row is marked expired');

-- A settlement arriving after its expired reservation was pruned still corrects the row.
update public.api_usage set created_at = now() - interval '3 days' where request_id = (select id from ids where name = 'stale1');
select is((select tollgate.prune_api_usage() ->> 'api_usage_expired'), '1',
  'the expired row older than a day goes; the one expired two hours ago stays');
select is(pg_temp.settle((select id from ids where name = 'stale1'), (select id from ids where name = 'user')) ->> 'late', 'true',
  'a settlement after the reservation row was pruned still replaces the estimate');
select results_eq(
  $$select spent_usd, reserved_usd from public.budget_status where scope = 'global'$$,
  $$select sum(estimated_cost), (select coalesce(sum(reserved_cost), 0) from public.api_usage where status = 'reserved')
    from public.ai_api_calls$$,
  'and the budget still equals the call log');

select * from finish();
rollback;
