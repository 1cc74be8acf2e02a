-- ============================================================================
-- Upstream discipline: provider keys (registration, rotation, death, budgets,
-- expiry), each key's headroom, the priority queue (FIFO, priority, aging,
-- abandoned tickets, shedding, timeouts), admission end to end on a provider
-- under an in-flight ceiling, load shedding, and settlement's bookkeeping (dead
-- keys, rate-limit headers, spend per key; 429 streaks on the breakers). The
-- functions take an explicit `at`: the queue and headroom are tested at fixed
-- instants. Providers and routes are the test's own (pgtap-up*), so nothing meets
-- another file.
-- ============================================================================
begin;
select plan(173);
set local timezone = 'UTC';

-- ----------------------------------------------------------------------------
-- Fixtures
-- ----------------------------------------------------------------------------
create temporary table ids (name text primary key, id uuid) on commit drop;
create temporary table t (name text primary key, a jsonb) on commit drop;

\ir helpers.psql

-- The fixed clock: `secs` seconds after 2031-01-01 12:00 UTC.
create function pg_temp.at(secs numeric)
returns timestamptz
language sql
as $$
  select '2031-01-01 12:00:00+00'::timestamptz + make_interval(secs => secs)
$$;

-- Request ids the queue tests can name: pg_temp.rid(7) = 00000000-0000-4000-8000-000000000007.
create function pg_temp.rid(n integer)
returns uuid
language sql
as $$
  select format('00000000-0000-4000-8000-%s', lpad(n::text, 12, '0'))::uuid
$$;

-- The queue step for request `n` of `priority` on provider pgtap-up, `secs` into the fixed clock.
create function pg_temp.up(n integer, priority text, secs numeric, provider text default 'pgtap-up')
returns jsonb
language sql
as $$
  select tollgate.upstream_admission(pg_temp.rid(n), (select id from ids where name = 'user'), provider, priority, 100,
    pg_temp.at(secs))
$$;

-- The headroom / usability of pgtap-up's `primary` key with `patch` applied to its row.
create function pg_temp.headroom(patch jsonb, in_flight bigint, tokens integer, secs numeric)
returns integer
language sql
as $$
  select tollgate.key_headroom(jsonb_populate_record(k, patch), in_flight, tokens, pg_temp.at(secs))
  from tollgate.provider_keys as k where k.provider = 'pgtap-up' and k.label = 'primary'
$$;
create function pg_temp.usable(patch jsonb, secs numeric)
returns boolean
language sql
as $$
  select tollgate.key_usable(jsonb_populate_record(k, patch), pg_temp.at(secs))
  from tollgate.provider_keys as k where k.provider = 'pgtap-up' and k.label = 'primary'
$$;

-- The provider's reported allowance (recorded as low until an hour after the fixed
-- clock's start) leaves room for `n` more calls on pgtap-up's primary key.
create function pg_temp.room(n integer)
returns void
language sql
as $$
  update tollgate.provider_keys
  set observed_at = pg_temp.at(-1), remaining_requests = requests_since_observed + n, requests_reset_at = pg_temp.at(3600)
  where provider = 'pgtap-up' and label = 'primary'
$$;

create function pg_temp.ticket(n integer)
returns boolean
language sql
as $$
  select exists (select from tollgate.upstream_queue where request_id = pg_temp.rid(n))
$$;

-- Admission and settlement as the function calls them.
create function pg_temp.admit(request_id uuid, feature text, model text default 'pgtap-up-model')
returns jsonb
language sql
as $$
  select tollgate.admit(jsonb_build_object(
    'request_id', request_id, 'user_id', (select id from ids where name = 'user'), 'feature', feature, 'model', model,
    'estimated_input_tokens', 100, 'max_output_tokens', 100, 'estimated_cost_usd', 0.001))
$$;
create function pg_temp.reserve()
returns uuid
language sql
as $$
  select (pg_temp.admit(gen_random_uuid(), 'default', 'gpt-4o-mini') ->> 'request_id')::uuid
$$;
create function pg_temp.settle(request_id uuid, provider text, attempts jsonb, status text default 'success',
  cost numeric default 0.0001)
returns jsonb
language sql
as $$
  select tollgate.settle(jsonb_build_object(
    'request_id', request_id, 'user_id', (select id from ids where name = 'user'), 'provider', provider, 'model', 'm1',
    'status', status, 'input_tokens', 120, 'output_tokens', 80, 'latency_ms', 500, 'cost_usd', cost,
    'attempts', jsonb_array_length(attempts), 'attempts_detail', attempts))
$$;
-- One attempt on key `label` of pgtap-up-keys.
create function pg_temp.attempt(label text, status integer, extra jsonb default '{}')
returns jsonb
language sql
as $$
  select jsonb_build_object('provider', 'pgtap-up-keys', 'model', 'm1', 'ok', status between 200 and 299,
    'status', status, 'key', label) || extra
$$;

insert into tollgate.tiers (name, max_output_tokens) values ('test', 4096);
insert into tollgate.tier_windows (tier, name, window_seconds, max_requests) values ('test', 'minute', 60, 1000);
update tollgate.budgets set monthly_limit_usd = 1000 where scope = 'global';
delete from tollgate.budget_alerts;
insert into tollgate.features (name, priority) values
  ('up-crit', 'critical'), ('up-normal', 'normal'), ('up-batch', 'batch'), ('up-bg', 'background');
-- pgtap-up-model runs on pgtap-up-live, falls back to pgtap-up-fb; its cheaper model runs on pgtap-up-spare.
insert into tollgate.routes (model, cheaper_model) values ('pgtap-up-model', 'pgtap-up-mini'), ('pgtap-up-mini', null);
insert into tollgate.route_targets (route_model, position, provider, model) values
  ('pgtap-up-model', 1, 'pgtap-up-live', 'up-large'),
  ('pgtap-up-model', 2, 'pgtap-up-fb', 'fb-large'),
  ('pgtap-up-mini', 1, 'pgtap-up-spare', 'up-mini');

insert into ids values ('user', pg_temp.new_user('upstream@test', 'test'));

-- ----------------------------------------------------------------------------
-- Configuration: the seeded classes and settings; features may be `batch`
-- ----------------------------------------------------------------------------
select results_eq(
  $$select priority, rank::integer, max_wait_seconds, shed_queue_depth from tollgate.priority_classes order by rank$$,
  $$values ('critical'::text, 0, 10, null::integer), ('normal', 1, 20, 50), ('batch', 2, 45, 25), ('background', 3, 60, 10)$$,
  'priority classes (seed 003): critical first and never shed, then normal, batch, background');
select results_eq(
  $$select queue_aging_seconds, queue_poll_ms, queue_ticket_ttl_seconds, low_headroom_percent, rate_limit_streak,
      key_expiry_warning_days from tollgate.upstream_settings$$,
  $$values (10, 250, 5, 20, 3, 14)$$,
  'upstream settings: one row with the documented defaults');
select is((select priority from tollgate.features where name = 'up-batch'), 'batch', 'a feature may have the batch priority');

-- ----------------------------------------------------------------------------
-- tollgate.register_provider_keys: label and fingerprint, never the key
-- ----------------------------------------------------------------------------
select is(tollgate.register_provider_keys('[
    {"provider": "pgtap-up", "label": "primary", "fingerprint": "sha256:00000000000000a1", "position": 1},
    {"provider": "pgtap-up", "label": "backup", "fingerprint": "sha256:00000000000000b1", "position": 2}]'), 2,
  'registering two keys writes two rows');
select results_eq(
  $$select label, fingerprint, position::integer, state, dead_since is null
    from tollgate.provider_keys where provider = 'pgtap-up' order by position$$,
  $$values ('primary'::text, 'sha256:00000000000000a1'::text, 1, 'active'::text, true),
           ('backup', 'sha256:00000000000000b1', 2, 'active', true)$$,
  'each key is active, with its label, fingerprint and position');
select is(tollgate.register_provider_keys(
    '[{"provider": "pgtap-up", "label": "primary", "fingerprint": "sha256:00000000000000a1", "position": 1}]'), 0,
  'registering the same key again writes nothing');

update tollgate.provider_keys
set state = 'dead', dead_since = pg_temp.at(0), dead_status = 401, daily_budget_usd = 25
where provider = 'pgtap-up' and label = 'backup';
select is(tollgate.register_provider_keys(
    '[{"provider": "pgtap-up", "label": "backup", "fingerprint": "sha256:00000000000000b1", "position": 3}]'), 1,
  'a new position is written ...');
select results_eq(
  $$select state, dead_status::integer, position::integer from tollgate.provider_keys where provider = 'pgtap-up' and label = 'backup'$$,
  $$values ('dead'::text, 401, 3)$$,
  '... but the same fingerprint keeps a dead key dead');
select is(tollgate.register_provider_keys(
    '[{"provider": "pgtap-up", "label": "backup", "fingerprint": "sha256:00000000000000b2", "position": 2}]'), 1,
  'a new fingerprint (the secret was rotated) is written');
select results_eq(
  $$select state, fingerprint, dead_since is null and dead_status is null, daily_budget_usd
    from tollgate.provider_keys where provider = 'pgtap-up' and label = 'backup'$$,
  $$values ('active'::text, 'sha256:00000000000000b2'::text, true, 25::numeric(14,6))$$,
  'a rotated key is active again with its state reset; the operator''s settings stay');
select throws_ok($$select tollgate.register_provider_keys('{"provider": "pgtap-up"}')$$, '22023',
  'tollgate.register_provider_keys: keys must be an array of {provider, label, fingerprint, position}',
  'keys that are not an array are refused');
select throws_ok(
  $$select tollgate.register_provider_keys('[{"provider": "pgtap-up", "label": "x", "position": 1}]')$$, '22023', null,
  'a key without a fingerprint is refused');
select throws_ok(
  $$select tollgate.register_provider_keys('[{"provider": "pgtap-up", "label": "x", "fingerprint": "sha256:00000000000000c1", "position": "1"}]')$$,
  '22023', null, 'a position that is not a number is refused');
select is(tollgate.revive_provider_key('pgtap-up', 'nope'), false, 'reviving an unknown key says so');

-- ----------------------------------------------------------------------------
-- tollgate.key_headroom: the least over every limit (fixed clock, T = 12:00:00)
-- ----------------------------------------------------------------------------
select is(pg_temp.headroom('{}', 0, 100, 0), 2147483647, 'a key without limits: no limit known (2147483647)');
select is(pg_temp.headroom('{"max_in_flight": 3}', 1, 100, 0), 2, 'max_in_flight 3 with 1 in flight: 2');
select is(pg_temp.headroom('{"max_in_flight": 3}', 3, 100, 0), 0, 'max_in_flight 3 with 3 in flight: 0');
select is(pg_temp.headroom('{"max_in_flight": 3}', 5, 100, 0), 0, 'never below 0');
-- The current window began 15 s before T with 6 requests; the previous one had 10.
select is(pg_temp.headroom('{"requests_per_minute": 20, "minute_start": "2031-01-01T11:59:45Z", "minute_requests": 6,
    "previous_minute_requests": 10}', 0, 100, 0), 6,
  'requests_per_minute 20: 6 this window + 10 x 75% of the previous (still overlapping) = 13.5 used, 6 free');
select is(pg_temp.headroom('{"requests_per_minute": 20, "minute_start": "2031-01-01T11:59:45Z", "minute_requests": 6,
    "previous_minute_requests": 10}', 0, 100, 60), 15,
  'a minute later the window has moved on: 6 x 75% = 4.5 used, 15 free');
select is(pg_temp.headroom('{"requests_per_minute": 20, "minute_start": "2031-01-01T11:59:45Z", "minute_requests": 6,
    "previous_minute_requests": 10}', 0, 100, 120), 20, 'two minutes later both windows are over: 20 free');
select is(pg_temp.headroom('{"observed_at": "2031-01-01T11:59:59Z", "remaining_requests": 5, "requests_since_observed": 2,
    "requests_reset_at": "2031-01-01T12:00:10Z"}', 0, 100, 0), 3,
  'recorded headers: 5 remaining, 2 granted since: 3 free');
select is(pg_temp.headroom('{"observed_at": "2031-01-01T11:59:59Z", "remaining_requests": 5, "requests_since_observed": 2,
    "requests_reset_at": "2031-01-01T12:00:10Z"}', 0, 100, 10), 2147483647,
  'after their reset the recorded headers no longer limit');
select is(pg_temp.headroom('{"tokens_per_minute": 1000, "minute_start": "2031-01-01T12:00:00Z", "minute_tokens": 900}',
    0, 100, 0), 2147483647, 'tokens_per_minute: 900 used + 100 fits in 1000');
select is(pg_temp.headroom('{"tokens_per_minute": 1000, "minute_start": "2031-01-01T12:00:00Z", "minute_tokens": 900}',
    0, 101, 0), 0, '900 used + 101 does not fit: 0');
select is(pg_temp.headroom('{"observed_at": "2031-01-01T11:59:59Z", "remaining_tokens": 500, "tokens_since_observed": 100,
    "tokens_reset_at": "2031-01-01T12:00:30Z"}', 0, 401, 0), 0,
  'recorded tokens: 500 remaining less 100 granted since leaves no room for 401');
select is(pg_temp.headroom('{"observed_at": "2031-01-01T11:59:59Z", "remaining_tokens": 500, "tokens_since_observed": 100,
    "tokens_reset_at": "2031-01-01T12:00:30Z"}', 0, 400, 0), 2147483647, '... but for 400');

-- ----------------------------------------------------------------------------
-- tollgate.key_usable: active, not expired, under its daily budget
-- ----------------------------------------------------------------------------
insert into tollgate.provider_key_usage_daily (provider, label, day, shard, calls, cost_usd) values
  ('pgtap-up', 'primary', '2031-01-01', 0, 3, 0.60),
  ('pgtap-up', 'primary', '2031-01-01', 1, 2, 0.39),
  ('pgtap-up', 'primary', '2030-12-31', 0, 9, 5.00);
select is(pg_temp.usable('{}', 0), true, 'an active key is usable');
select is(pg_temp.usable('{"state": "dead"}', 0), false, 'a dead key is not');
select is(pg_temp.usable('{"expires_on": "2031-01-01"}', 0), false, 'a key is not used from its expiry day');
select is(pg_temp.usable('{"expires_on": "2031-01-02"}', 0), true, 'but up to the day before');
select is(pg_temp.usable('{"daily_budget_usd": 1.00}', 0), true,
  'under its daily budget (0.99 of 1.00 today, in two shards; yesterday does not count)');
select is(pg_temp.usable('{"daily_budget_usd": 0.99}', 0), false, 'at its daily budget it is not used');
select is(pg_temp.usable('{"daily_budget_usd": 0.99}', 86400), true, 'the next UTC day it is used again');
delete from tollgate.provider_key_usage_daily where provider = 'pgtap-up';

-- ----------------------------------------------------------------------------
-- tollgate.upstream_admission: grant, queue (priority, FIFO, aging), shed, time out
-- ----------------------------------------------------------------------------
-- pgtap-up keeps one key; its provider reported no requests left until T + 1 hour.
delete from tollgate.provider_keys where provider = 'pgtap-up' and label = 'backup';
select pg_temp.room(0);

-- Nobody waiting and no room: the request's class is read for it alone. A class that
-- sheds at depth 0 refuses it at once, and it leaves no ticket.
update tollgate.priority_classes set shed_queue_depth = 0 where priority = 'background';
select is(pg_temp.up(90, 'background', 0),
  '{"decision": "shed", "retry_after_seconds": 60, "depth": 0}'::jsonb,
  'no room and nobody waiting: the class is read, and a class shed at depth 0 is refused');
select is((select count(*)::integer from tollgate.upstream_queue), 0, 'and it left no ticket');
update tollgate.priority_classes set shed_queue_depth = 10 where priority = 'background';

insert into t values ('a1', pg_temp.up(1, 'normal', 0));
select is((select a from t where name = 'a1'),
  jsonb_build_object('decision', 'queued', 'retry_after_seconds', 3600, 'queue', jsonb_build_object(
    'provider', 'pgtap-up', 'position', 1, 'depth', 1, 'poll_after_ms', 250, 'wait_until', pg_temp.at(20))),
  'no room: queued first, poll every 250 ms, wait at most 20 s (normal), retry when the provider''s allowance resets');
select results_eq(
  $$select provider, priority, rank::integer, enqueued_at, wait_until, last_seen_at from tollgate.upstream_queue
    where request_id = pg_temp.rid(1)$$,
  $$values ('pgtap-up'::text, 'normal'::text, 1, pg_temp.at(0), pg_temp.at(20), pg_temp.at(0))$$,
  'the ticket: provider, class, rank, arrival, deadline, last poll');
select is((pg_temp.up(2, 'normal', 1) -> 'queue') - 'wait_until' - 'poll_after_ms',
  '{"provider": "pgtap-up", "position": 2, "depth": 2}'::jsonb, 'a second normal request queues behind it');
select is((pg_temp.up(3, 'critical', 2) -> 'queue') - 'wait_until' - 'poll_after_ms',
  '{"provider": "pgtap-up", "position": 1, "depth": 3}'::jsonb, 'a critical request goes before both');
insert into t values ('a1-poll', pg_temp.up(1, 'normal', 3));
select is((select array[a #>> '{queue,position}', a #>> '{queue,depth}'] from t where name = 'a1-poll'), array['2', '3'],
  'polling again: the first normal request is second now');
select results_eq(
  $$select enqueued_at, wait_until, last_seen_at from tollgate.upstream_queue where request_id = pg_temp.rid(1)$$,
  $$values (pg_temp.at(0), pg_temp.at(20), pg_temp.at(3))$$,
  'a poll renews the ticket, keeping its place and its deadline');

select pg_temp.room(1);
select is(pg_temp.up(2, 'normal', 3) #>> '{queue,position}', '3', 'room for one: the last in line still waits');
select is(pg_temp.up(1, 'normal', 3) #>> '{queue,position}', '2', 'so does the second');
select is(pg_temp.up(3, 'critical', 3), '{"decision": "go", "key": "primary", "holds_slot": false}'::jsonb,
  'the first in line is granted the key (no in-flight ceiling: no slot held)');
select ok(not pg_temp.ticket(3), 'a granted request''s ticket is removed');
select is((select requests_since_observed from tollgate.provider_keys where provider = 'pgtap-up' and label = 'primary'), 1,
  'the grant uses up the provider''s reported allowance');
select is(pg_temp.up(3, 'critical', 3) ->> 'decision', 'queued', 'which is now used up');
delete from tollgate.upstream_queue where request_id = pg_temp.rid(3);

select pg_temp.room(1);
select is(pg_temp.up(2, 'normal', 4) #>> '{queue,position}', '2', 'FIFO within a class: the later normal request waits ...');
select is(pg_temp.up(1, 'normal', 4) ->> 'decision', 'go', '... and the earlier one is granted');

-- Request 2 last polled at T+4: by T+10 (ttl 5 s) its caller is gone.
select is((pg_temp.up(4, 'normal', 10) -> 'queue') - 'wait_until' - 'poll_after_ms',
  '{"provider": "pgtap-up", "position": 1, "depth": 1}'::jsonb,
  'a ticket not renewed for queue_ticket_ttl_seconds no longer counts');
delete from tollgate.upstream_queue where provider = 'pgtap-up';

-- Aging: a background request moves up one class per 10 s waited.
select pg_temp.room(0);
select is((pg_temp.up(11, 'background', 20) -> 'queue') - 'poll_after_ms',
  jsonb_build_object('provider', 'pgtap-up', 'position', 1, 'depth', 1, 'wait_until', pg_temp.at(80)),
  'a background request queues (60 s at most)');
select is(pg_temp.up(12, 'critical', 21) #>> '{queue,position}', '1', 'a fresh critical request goes before it');
select is(tollgate.leave_queue(pg_temp.rid(12)), true, 'tollgate.leave_queue removes a ticket ...');
select is(tollgate.leave_queue(pg_temp.rid(12)), false, '... and says when there was none');
select is(pg_temp.up(11, 'background', 54) #>> '{queue,position}', '1', 'the background request keeps polling');
select is(pg_temp.up(13, 'critical', 55) #>> '{queue,position}', '2',
  'after 35 s of waiting it ranks with critical requests, and arrived first: a new critical request goes after it');
select pg_temp.room(1);
select is(pg_temp.up(13, 'critical', 56) ->> 'decision', 'queued', 'with room for one, the critical request waits');
select is(pg_temp.up(11, 'background', 56) ->> 'decision', 'go', 'and the aged background request is granted');
delete from tollgate.upstream_queue where provider = 'pgtap-up';

-- Shedding: background past 10 waiting, batch past 25; critical and normal always queue here.
select pg_temp.room(0);
insert into tollgate.upstream_queue (request_id, provider, priority, rank, user_id, enqueued_at, wait_until, last_seen_at)
select gen_random_uuid(), 'pgtap-up', 'critical', 0, (select id from ids where name = 'user'), pg_temp.at(100),
  pg_temp.at(110), pg_temp.at(100)
from generate_series(1, 10);
select is(pg_temp.up(21, 'background', 100), '{"decision": "shed", "retry_after_seconds": 60, "depth": 10}'::jsonb,
  'ten waiting: a background request is shed');
select ok(not pg_temp.ticket(21), 'a shed request leaves no ticket');
select is(pg_temp.up(22, 'batch', 100) -> 'queue' ->> 'position', '11', 'a batch request still queues');
insert into tollgate.upstream_queue (request_id, provider, priority, rank, user_id, enqueued_at, wait_until, last_seen_at)
select gen_random_uuid(), 'pgtap-up', 'critical', 0, (select id from ids where name = 'user'), pg_temp.at(100),
  pg_temp.at(110), pg_temp.at(100)
from generate_series(1, 15);
select is(pg_temp.up(22, 'batch', 101), '{"decision": "shed", "retry_after_seconds": 60, "depth": 25}'::jsonb,
  'twenty-five others waiting: the batch request is shed, even while it waits');
select ok(not pg_temp.ticket(22), 'and its ticket is removed');
select is((pg_temp.up(23, 'normal', 101) -> 'queue') - 'wait_until' - 'poll_after_ms',
  '{"provider": "pgtap-up", "position": 26, "depth": 26}'::jsonb,
  'a normal request is never shed by the queue step (admit() downgrades it instead)');
delete from tollgate.upstream_queue where provider = 'pgtap-up';

-- Timeout: past the class's longest wait.
select is(pg_temp.up(31, 'normal', 200) #>> '{queue,wait_until}', to_jsonb(pg_temp.at(220)) #>> '{}',
  'a normal request may wait until 20 s after it arrived');
select is(pg_temp.up(31, 'normal', 219) ->> 'decision', 'queued', 'it still waits at 19 s');
insert into t values ('timeout', pg_temp.up(31, 'normal', 220));
select is((select a from t where name = 'timeout'), '{"decision": "timeout", "retry_after_seconds": 3380, "depth": 0}'::jsonb,
  'at 20 s it times out, told to retry when the provider''s allowance resets');
select ok((select (a ->> 'retry_after_seconds')::integer >= 1 from t where name = 'timeout') and not pg_temp.ticket(31),
  'retry_after_seconds is at least 1, and the ticket is removed');

-- A per-minute ceiling (no headers): grants count in the sliding minute.
select is(tollgate.register_provider_keys(
  '[{"provider": "pgtap-up-rpm", "label": "primary", "fingerprint": "sha256:00000000000000d1", "position": 1}]'), 1,
  'another provider''s key');
update tollgate.provider_keys set requests_per_minute = 2 where provider = 'pgtap-up-rpm';
select is(array[pg_temp.up(41, 'normal', 300, 'pgtap-up-rpm') ->> 'decision',
    pg_temp.up(42, 'normal', 301, 'pgtap-up-rpm') ->> 'decision'], array['go', 'go'],
  'requests_per_minute 2: two grants in a minute');
insert into t values ('rpm', pg_temp.up(43, 'normal', 302, 'pgtap-up-rpm'));
select is((select array[a ->> 'decision', a ->> 'retry_after_seconds'] from t where name = 'rpm'), array['queued', '60'],
  'the third waits (retry within the minute)');
select is(pg_temp.up(44, 'normal', 361, 'pgtap-up-rpm') ->> 'decision', 'queued',
  'just after the minute, the previous window still weighs 59/60');
select is(pg_temp.up(45, 'normal', 390, 'pgtap-up-rpm') ->> 'decision', 'go', 'half a minute later there is room again');
select results_eq(
  $$select minute_start, minute_requests, previous_minute_requests from tollgate.provider_keys where provider = 'pgtap-up-rpm'$$,
  $$values (pg_temp.at(360), 1, 2)$$,
  'the grant moved the window on: 1 this minute, 2 the previous one');

-- Far from every limit (more room than every database connection could grant in one
-- batch of 32), grants share the provider's lock and write nothing; a per-minute
-- ceiling always counts.
select is(tollgate.register_provider_keys(
  '[{"provider": "pgtap-up-roomy", "label": "primary", "fingerprint": "sha256:00000000000000d2", "position": 1}]'), 1,
  'a provider with a generous in-flight ceiling');
update tollgate.provider_keys
set max_in_flight = current_setting('max_connections')::integer * tollgate.max_batch_size() - 1
where provider = 'pgtap-up-roomy';
select is((select r.roomy from tollgate.provider_room('pgtap-up-roomy', 100, pg_temp.at(400)) as r), false,
  'one call short of a full batch per database connection, it is not roomy');
update tollgate.provider_keys set max_in_flight = 100000 where provider = 'pgtap-up-roomy';
select is((select array[r.roomy::text, r.best_key, r.best_holds_slot::text]
    from tollgate.provider_room('pgtap-up-roomy', 100, pg_temp.at(400)) as r),
  array['true', 'primary', 'true'], 'its key is roomy, and a call on it holds a slot');
-- Which way a grant takes the lock follows the session's latest read of the room: the
-- first grant reads it under the exclusive lock.
select is(pg_temp.up(50, 'normal', 400, 'pgtap-up-roomy'), '{"decision": "go", "key": "primary", "holds_slot": true}'::jsonb,
  'the session''s first grant on the provider');
select results_eq(
  $$select minute_start, minute_requests, requests_since_observed from tollgate.provider_keys
    where provider = 'pgtap-up-roomy'$$,
  $$values (pg_temp.at(400), 1, 1)$$,
  'takes the exclusive lock and counts in the key''s minute');
select is(current_setting('tollgate.upstream_roomy'), ',pgtap-up-roomy,', 'the session notes the provider roomy');
select set_config('tollgate.upstream_shared', '', true); -- as in a new transaction
select is(pg_temp.up(51, 'normal', 400, 'pgtap-up-roomy'), '{"decision": "go", "key": "primary", "holds_slot": true}'::jsonb,
  'granted on the shared lock');
select results_eq(
  $$select minute_start, minute_requests, requests_since_observed from tollgate.provider_keys
    where provider = 'pgtap-up-roomy'$$,
  $$values (pg_temp.at(400), 1, 1)$$,
  'without writing the key');
update tollgate.provider_keys set requests_per_minute = 100000000 where provider = 'pgtap-up-roomy';
select is((select r.roomy from tollgate.provider_room('pgtap-up-roomy', 100, pg_temp.at(401)) as r), false,
  'with a per-minute ceiling it is not roomy: grants are counted');
-- This transaction holds the provider's lock in share mode (the grant above), and that
-- read under the lock serves its later requests: a ceiling set meanwhile counts from the
-- next read on.
select is(pg_temp.up(53, 'normal', 401, 'pgtap-up-roomy'), '{"decision": "go", "key": "primary", "holds_slot": true}'::jsonb,
  'a later request of the transaction is granted on the same read');
select is(current_setting('tollgate.upstream_shared'), ',pgtap-up-roomy=primary:true:2,',
  'the transaction notes the provider, the key its read found and the two grants made on it');
-- A later request with a ticket of its own takes the whole step: it is ranked, and its
-- ticket goes. One without a ticket is granted on the read without looking at the queue:
-- a ticket added meanwhile waits for its next poll.
insert into tollgate.upstream_queue (request_id, provider, priority, rank, user_id, enqueued_at, wait_until, last_seen_at)
values (pg_temp.rid(56), 'pgtap-up-roomy', 'normal', 1, (select id from ids where name = 'user'), pg_temp.at(400),
  pg_temp.at(420), pg_temp.at(400));
select is(pg_temp.up(56, 'normal', 401, 'pgtap-up-roomy') ->> 'decision', 'go',
  'a later request that was waiting is granted on the same read');
select ok(not pg_temp.ticket(56), '... and its ticket is gone');
insert into tollgate.upstream_queue (request_id, provider, priority, rank, user_id, enqueued_at, wait_until, last_seen_at)
select pg_temp.rid(n), 'pgtap-up-roomy', 'normal', 1, (select id from ids where name = 'user'), pg_temp.at(401),
  pg_temp.at(421), pg_temp.at(401)
from generate_series(57, 58) as n;
select is(pg_temp.up(59, 'normal', 401, 'pgtap-up-roomy') ->> 'decision', 'go',
  'a later request without a ticket is granted on the read, though a ticket came meanwhile');
select is(current_setting('tollgate.upstream_shared'), ',pgtap-up-roomy=primary:true:4,', 'its grant counted on the read');
select is(pg_temp.up(58, 'normal', 401, 'pgtap-up-roomy') -> 'queue' ->> 'position', '2',
  'a waiting request that finds another ahead of it waits');
select is(current_setting('tollgate.upstream_shared'), ',pgtap-up-roomy=-,',
  'and the transaction grants no more on its read: someone is waiting');
select is(pg_temp.up(60, 'normal', 401, 'pgtap-up-roomy') ->> 'decision', 'queued', 'so a later request waits too');
delete from tollgate.upstream_queue where provider = 'pgtap-up-roomy';
-- After a batch's worth of grants it reads again; a shared holder never asks for the lock
-- exclusive, which would deadlock with another holder doing the same.
select set_config('tollgate.upstream_shared', ',pgtap-up-roomy=primary:true:' || tollgate.max_batch_size() || ',', true);
select is(pg_temp.up(55, 'normal', 401, 'pgtap-up-roomy') ->> 'decision', 'queued',
  'past a batch''s grants it reads again, finds the per-minute ceiling and waits one poll rather than ask for the lock exclusive');
select is(current_setting('tollgate.upstream_shared'), ',pgtap-up-roomy=-,', 'noting that its read found too little room');
select is(current_setting('tollgate.upstream_roomy'), ',', '... and that the provider is no longer roomy');
select ok(tollgate.leave_queue(pg_temp.rid(55)), '... and leaves the queue');
-- A session whose note is out of date takes the shared lock, finds too little room under
-- it, and makes its request wait one poll; its next grant goes the exclusive way.
select set_config('tollgate.upstream_shared', '', true);
select set_config('tollgate.upstream_roomy', ',pgtap-up-roomy,', false);
select is(pg_temp.up(61, 'normal', 401, 'pgtap-up-roomy') ->> 'decision', 'queued',
  'a session that took the provider for roomy makes the request wait one poll');
select is(current_setting('tollgate.upstream_roomy'), ',', '... and notes it no longer roomy');
select ok(tollgate.leave_queue(pg_temp.rid(61)), '... which leaves the queue');
select set_config('tollgate.upstream_shared', '', true); -- as in a new transaction
select is(pg_temp.up(52, 'normal', 401, 'pgtap-up-roomy') ->> 'decision', 'go', 'granted on the exclusive lock');
select is((select minute_requests from tollgate.provider_keys where provider = 'pgtap-up-roomy'), 2,
  'and counted in the minute, after the session''s first grant');
select is(tollgate.register_provider_keys(
  '[{"provider": "pgtap_up_under", "label": "primary", "fingerprint": "sha256:00000000000000d3", "position": 1}]'), 1,
  'a provider whose name holds a LIKE wildcard, with a per-minute ceiling');
update tollgate.provider_keys set requests_per_minute = 100 where provider = 'pgtap_up_under';
select set_config('tollgate.upstream_shared', ',pgtap-up-under=primary:true:1,', true);
select is(pg_temp.up(54, 'normal', 402, 'pgtap_up_under') ->> 'decision', 'go',
  'a provider whose name, read as a LIKE pattern, matches one held in share mode is not taken for it');
select set_config('tollgate.upstream_shared', '', true);

-- ----------------------------------------------------------------------------
-- tollgate.admit end to end: a provider with one key under max_in_flight = 1
-- ----------------------------------------------------------------------------
select is(tollgate.register_provider_keys(
  '[{"provider": "pgtap-up-live", "label": "primary", "fingerprint": "sha256:00000000000000e1", "position": 1}]'), 1,
  'the live provider''s key');
update tollgate.provider_keys set max_in_flight = 1 where provider = 'pgtap-up-live';

insert into t values ('A', pg_temp.admit(pg_temp.rid(101), 'up-normal'));
select is((select array[a ->> 'allowed', a ->> 'layer', a ->> 'code', a ->> 'shed'] from t where name = 'A'),
  array['true', null, null, null], 'the first request is admitted');
select is((select a -> 'route' from t where name = 'A'),
  '[{"provider": "pgtap-up-live", "model": "up-large", "state": "closed", "probe": false, "key": "primary"},
    {"provider": "pgtap-up-fb", "model": "fb-large", "state": "closed", "probe": false, "key": null}]'::jsonb,
  'its route names the granted key (a provider without keys: null)');
select results_eq(
  $$select provider, provider_key, holds_upstream_slot, status from public.api_usage where request_id = pg_temp.rid(101)$$,
  $$values ('pgtap-up-live'::text, 'primary'::text, true, 'reserved'::text)$$,
  'its reservation holds the key''s one in-flight slot');

insert into t values ('B', pg_temp.admit(pg_temp.rid(102), 'up-normal'));
select is((select array[a ->> 'allowed', a ->> 'layer', a ->> 'code', a ->> 'retry_after_seconds'] from t where name = 'B'),
  array['false', 'upstream', 'queued', '1'], 'the second waits: layer upstream, code queued, retry in a second');
select is((select (a -> 'queue') - 'wait_until' from t where name = 'B'),
  '{"provider": "pgtap-up-live", "position": 1, "depth": 1, "poll_after_ms": 250}'::jsonb,
  'with its place in the queue');
select ok((select (a #>> '{queue,wait_until}')::timestamptz - u.enqueued_at = interval '20 seconds'
    from t, tollgate.upstream_queue as u where t.name = 'B' and u.request_id = pg_temp.rid(102)),
  'and its deadline, 20 s after it queued');
select is((select a ->> 'message' from t where name = 'B'), 'Waiting for pgtap-up-live capacity: position 1 in the queue.',
  'the message says what it waits for');
select is((select count(*)::integer from public.api_usage where request_id = pg_temp.rid(102))
  + (select count(*)::integer from tollgate.rejections where request_id = pg_temp.rid(102)), 0,
  'a queued request reserves nothing and is not logged as a refusal');

select is(pg_temp.settle(pg_temp.rid(101), 'pgtap-up-live',
    '[{"provider": "pgtap-up-live", "model": "up-large", "ok": true, "status": 200, "key": "primary"}]') ->> 'settled',
  'true', 'the first call is settled');
select is(tollgate.key_in_flight('pgtap-up-live', 'primary'), 0::bigint, 'its slot is free');
insert into t values ('B2', pg_temp.admit(pg_temp.rid(102), 'up-normal'));
select is((select array[a ->> 'allowed', a #>> '{route,0,key}', a ->> 'queue'] from t where name = 'B2'),
  array['true', 'primary', null], 'asking again with the same request id, the second is admitted');
select ok(not pg_temp.ticket(102) and tollgate.key_in_flight('pgtap-up-live', 'primary') = 1,
  'its ticket is gone and it holds the slot');
select is((select count(*)::integer from tollgate.rejections where request_id = pg_temp.rid(102)), 0,
  'waiting left no rejection');
select results_eq(
  $$select provider, label, in_flight, max_in_flight, free_calls from public.provider_headroom where provider = 'pgtap-up-live'$$,
  $$values ('pgtap-up-live'::text, 'primary'::text, 1::bigint, 1, 0)$$,
  'public.provider_headroom shows the key full');

-- Load shedding: the provider's queue is past normal's shed depth (2 here).
update tollgate.priority_classes set shed_queue_depth = 2 where priority = 'normal';
update tollgate.priority_classes set shed_queue_depth = 2 where priority = 'background';
insert into tollgate.upstream_queue (request_id, provider, priority, rank, user_id, enqueued_at, wait_until, last_seen_at)
select gen_random_uuid(), 'pgtap-up-live', 'normal', 1, (select id from ids where name = 'user'), now(),
  clock_timestamp() + interval '1 hour', clock_timestamp() + interval '1 hour'
from generate_series(1, 2);
insert into t values ('C', pg_temp.admit(pg_temp.rid(103), 'up-normal'));
select is((select array[a ->> 'allowed', a ->> 'layer', a ->> 'shed', a ->> 'model'] from t where name = 'C'),
  array['true', 'upstream', 'downgraded', 'pgtap-up-mini'],
  'a normal request is downgraded to the route''s cheaper model while the queue is deep');
select is((select a -> 'restricted' from t where name = 'C'),
  '{"model": "pgtap-up-mini", "max_tokens": 100, "reason": "load_shedding"}'::jsonb,
  'restricted.reason is load_shedding; the answer keeps its length');
select is((select a #>> '{route,0,provider}' from t where name = 'C'), 'pgtap-up-spare', 'and it goes where the cheaper model runs');
select results_eq(
  $$select layer, code from tollgate.rejections where request_id = pg_temp.rid(103)$$,
  $$values ('upstream'::text, 'downgraded'::text)$$,
  'the downgrade is logged once, code downgraded');
insert into t values ('D', pg_temp.admit(pg_temp.rid(104), 'up-bg'));
select is((select array[a ->> 'allowed', a ->> 'layer', a ->> 'code', a ->> 'shed', a ->> 'retry_after_seconds'] from t where name = 'D'),
  array['false', 'upstream', 'load_shed', 'background', '60'], 'a background request is shed (load_shed)');
select results_eq(
  $$select layer, code from tollgate.rejections where request_id = pg_temp.rid(104)$$,
  $$values ('upstream'::text, 'load_shed'::text)$$,
  'and logged as a refusal');
insert into t values ('E', pg_temp.admit(pg_temp.rid(105), 'up-crit'));
select is((select array[a ->> 'code', a ->> 'model', a #>> '{queue,position}'] from t where name = 'E'),
  array['queued', 'pgtap-up-model', '1'], 'a critical request queues on the best model, ahead of the queue');
select is(pg_temp.admit(pg_temp.rid(106), 'up-normal', 'pgtap-up-model') ->> 'shed', 'downgraded',
  'the shedding lasts while the queue is deep ...');
delete from tollgate.upstream_queue where provider = 'pgtap-up-live';
insert into t values ('F', pg_temp.admit(pg_temp.rid(107), 'up-normal'));
select is((select array[a ->> 'code', a ->> 'shed', a ->> 'model'] from t where name = 'F'),
  array['queued', null, 'pgtap-up-model'], '... and stops when it empties (the request queues for the best model)');
delete from tollgate.upstream_queue where provider = 'pgtap-up-live';

-- ----------------------------------------------------------------------------
-- tollgate.settle and tollgate.record_upstream: what the attempts say about keys
-- ----------------------------------------------------------------------------
select is(tollgate.register_provider_keys('[
    {"provider": "pgtap-up-keys", "label": "k1", "fingerprint": "sha256:00000000000000f1", "position": 1},
    {"provider": "pgtap-up-keys", "label": "k2", "fingerprint": "sha256:00000000000000f2", "position": 2},
    {"provider": "pgtap-up-keys", "label": "k3", "fingerprint": "sha256:00000000000000f3", "position": 3},
    {"provider": "pgtap-up-keys", "label": "k4", "fingerprint": "sha256:00000000000000f4", "position": 4}]'), 4,
  'four keys');

-- A refused key.
insert into ids values ('s1', pg_temp.reserve());
select is(pg_temp.settle((select id from ids where name = 's1'), 'pgtap-up-keys',
  jsonb_build_array(pg_temp.attempt('k1', 401), pg_temp.attempt('k2', 200))) ->> 'settled', 'true',
  'a call refused on k1 (401) and answered on k2');
select results_eq(
  $$select state, dead_status::integer, dead_since is not null from tollgate.provider_keys
    where provider = 'pgtap-up-keys' and label = 'k1'$$,
  $$values ('dead'::text, 401, true)$$,
  'k1 is dead, with the status it was refused with');
select results_eq(
  $$select kind, severity, details ->> 'label', details ->> 'fingerprint' from tollgate.budget_alerts
    where details ->> 'provider' = 'pgtap-up-keys'$$,
  $$values ('provider_key_dead'::text, 'investigate'::text, 'k1'::text, 'sha256:00000000000000f1'::text)$$,
  'one provider_key_dead alert names the key by label and fingerprint');
select is((select provider_key from public.ai_api_calls where request_id = (select id from ids where name = 's1')), 'k2',
  'ai_api_calls.provider_key is the last attempt''s key');
insert into ids values ('s2', pg_temp.reserve());
select lives_ok(format('select pg_temp.settle(%L, %L, %L)', (select id from ids where name = 's2'), 'pgtap-up-keys',
  jsonb_build_array(pg_temp.attempt('k1', 403), pg_temp.attempt('k2', 200))), 'k1 is refused again');
select is((select count(*)::integer from tollgate.budget_alerts where kind = 'provider_key_dead'
    and details ->> 'provider' = 'pgtap-up-keys'), 1, 'still one alert');
select is((select dead_status::integer from tollgate.provider_keys where provider = 'pgtap-up-keys' and label = 'k1'), 401,
  'and the key keeps its first refusal');
-- The function fell back to a provider it has no key for: the refusal still counts.
insert into ids values ('s3', pg_temp.reserve());
select is(pg_temp.settle((select id from ids where name = 's3'), 'pgtap-up-keyless',
  jsonb_build_array(pg_temp.attempt('k4', 401),
    '{"provider": "pgtap-up-keyless", "model": "m1", "ok": true, "status": 200}'::jsonb)) ->> 'settled', 'true',
  'a call refused on k4, then answered by a provider without keys');
select is((select provider_key from public.ai_api_calls where request_id = (select id from ids where name = 's3')), null,
  'its provider_key is null (the answering attempt used none)');
select is((select state from tollgate.provider_keys where provider = 'pgtap-up-keys' and label = 'k4'), 'dead',
  'but k4 is marked dead all the same');

-- 429 streaks belong to the provider and model (its circuit breaker), not to a key.
create function pg_temp.settle_on_m429(status integer)
returns void
language sql
as $$
  select pg_temp.settle(pg_temp.reserve(), 'pgtap-up-keys',
    jsonb_build_array(pg_temp.attempt('k3', status, '{"model": "m429"}')),
    case when status between 200 and 299 then 'success' else 'error' end, case when status = 200 then 0.0001 else 0 end)
$$;
create function pg_temp.m429()
returns text
language sql
as $$
  select format('%s %s %s', state, consecutive_failures, consecutive_429s) from tollgate.provider_health
  where provider = 'pgtap-up-keys' and model = 'm429'
$$;
create function pg_temp.rate_alerts()
returns integer
language sql
as $$
  select count(*)::integer from tollgate.budget_alerts where kind = 'provider_rate_limited'
    and details ->> 'provider' = 'pgtap-up-keys'
$$;
select pg_temp.settle_on_m429(429);
select pg_temp.settle_on_m429(429);
select is(pg_temp.m429(), 'closed 2 2', 'two 429s in a row: counted on the breaker (state, failures, 429s)');
select is(pg_temp.rate_alerts(), 0, 'no alert yet');
select pg_temp.settle_on_m429(429);
select is(pg_temp.m429(), 'open 3 3', 'the third opens the breaker: traffic goes to the fallback');
select results_eq(
  $$select kind, severity, details ->> 'model', (details ->> 'consecutive_429s')::integer, details ->> 'state'
    from tollgate.budget_alerts where kind = 'provider_rate_limited' and details ->> 'provider' = 'pgtap-up-keys'$$,
  $$values ('provider_rate_limited'::text, 'investigate'::text, 'm429'::text, 3, 'open'::text)$$,
  'and raises one provider_rate_limited alert for the provider and model');
select pg_temp.settle_on_m429(429);
select is(pg_temp.rate_alerts(), 1, 'a fourth 429 raises no second alert');
select is((select state from tollgate.provider_keys where provider = 'pgtap-up-keys' and label = 'k3'), 'active',
  'the key itself is not blamed');
select pg_temp.settle_on_m429(200);
select is(pg_temp.m429(), 'closed 0 0', 'a success closes the breaker and ends the streak');
select pg_temp.settle_on_m429(429);
select pg_temp.settle_on_m429(429);
select pg_temp.settle_on_m429(500);
select pg_temp.settle_on_m429(429);
select is(pg_temp.m429(), 'open 4 1', 'another failure ends a streak of 429s (the breaker counts both)');
select is(pg_temp.rate_alerts(), 1, 'so no new alert');

-- Rate-limit headers: recorded when low, cleared when healthy, newest observation wins.
create function pg_temp.observe(secs numeric, ratelimit jsonb)
returns void
language sql
as $$
  select pg_temp.settle(pg_temp.reserve(), 'pgtap-up-keys', jsonb_build_array(pg_temp.attempt('k2', 200,
    jsonb_build_object('at', pg_temp.at(secs), 'ratelimit', ratelimit))))
$$;
create function pg_temp.k2_headers()
returns jsonb
language sql
as $$
  select jsonb_build_object('observed_at', observed_at, 'remaining_requests', remaining_requests,
    'remaining_tokens', remaining_tokens, 'requests_reset_at', requests_reset_at, 'tokens_reset_at', tokens_reset_at,
    'requests_since_observed', requests_since_observed)
  from tollgate.provider_keys where provider = 'pgtap-up-keys' and label = 'k2'
$$;
select pg_temp.observe(0, '{"limit_requests": 100, "remaining_requests": 90, "limit_tokens": 10000, "remaining_tokens": 9000}');
select is(pg_temp.k2_headers() ->> 'observed_at', null, 'healthy headers are not recorded');
select pg_temp.observe(1, '{"limit_requests": 100, "remaining_requests": 10, "reset_requests_ms": 20000,
  "limit_tokens": 10000, "remaining_tokens": 9000, "reset_tokens_ms": 1500}');
select is(pg_temp.k2_headers(), jsonb_build_object('observed_at', pg_temp.at(1), 'remaining_requests', 10,
    'remaining_tokens', 9000, 'requests_reset_at', pg_temp.at(21), 'tokens_reset_at', pg_temp.at(2.5),
    'requests_since_observed', 0),
  'low headers (10 of 100 requests left, under 20%) are recorded with their resets');
select pg_temp.observe(0.5, '{"limit_requests": 100, "remaining_requests": 1, "limit_tokens": 10000, "remaining_tokens": 9000}');
select is(pg_temp.k2_headers() ->> 'remaining_requests', '10', 'an older observation does not replace a newer one');
select pg_temp.observe(2, '{"limit_requests": 100, "remaining_requests": 95, "limit_tokens": 10000, "remaining_tokens": 9900}');
select is(pg_temp.k2_headers(), '{"observed_at": null, "remaining_requests": null, "remaining_tokens": null,
    "requests_reset_at": null, "tokens_reset_at": null, "requests_since_observed": 0}'::jsonb,
  'a healthy observation clears the low record');

-- Spend per key.
select results_eq(
  $$select d.label, sum(d.calls)::integer, sum(d.cost_usd), sum(d.input_tokens)::integer
    from tollgate.provider_key_usage_daily as d where d.provider = 'pgtap-up-keys' group by d.label order by d.label$$,
  $$select c.provider_key, count(*)::integer, sum(c.estimated_cost)::numeric, sum(c.input_tokens)::integer
    from public.ai_api_calls as c where c.provider = 'pgtap-up-keys' group by c.provider_key order by c.provider_key$$,
  'provider_key_usage_daily holds each call''s cost under the key that answered');
select is((select sum(cost_usd) from tollgate.provider_key_usage_daily where provider = 'pgtap-up-keys' and label = 'k2'),
  0.0006::numeric, 'k2 answered six calls of 0.0001 USD');
select results_eq(
  $$select label, calls::integer, cost_usd from public.provider_key_spend where provider = 'pgtap-up-keys' order by label$$,
  $$values ('k2'::text, 6, 0.0006::numeric), ('k3', 9, 0.0001::numeric)$$,
  'public.provider_key_spend shows it per key and day');

select is(tollgate.revive_provider_key('pgtap-up-keys', 'k1'), true, 'an operator revives k1 ...');
select is((select state from tollgate.provider_keys where provider = 'pgtap-up-keys' and label = 'k1'), 'active', '... and it is active');

-- ----------------------------------------------------------------------------
-- tollgate.check_provider_keys: budget and expiry alerts (each once); stale tickets
-- ----------------------------------------------------------------------------
delete from tollgate.budget_alerts;
select is(tollgate.register_provider_keys('[
    {"provider": "pgtap-up-jobs", "label": "spent", "fingerprint": "sha256:0000000000000101", "position": 1},
    {"provider": "pgtap-up-jobs", "label": "thrifty", "fingerprint": "sha256:0000000000000102", "position": 2},
    {"provider": "pgtap-up-jobs", "label": "soon", "fingerprint": "sha256:0000000000000103", "position": 3},
    {"provider": "pgtap-up-jobs", "label": "later", "fingerprint": "sha256:0000000000000104", "position": 4},
    {"provider": "pgtap-up-jobs", "label": "expired", "fingerprint": "sha256:0000000000000105", "position": 5}]'), 5,
  'five keys for the job');
update tollgate.provider_keys as k set daily_budget_usd = v.budget, expires_on = v.expires
from (values ('spent', 1.00, null::date), ('thrifty', 5.00, null), ('soon', null, date '2031-01-11'),
  ('later', null, date '2031-01-31'), ('expired', null, date '2031-01-01')) as v (label, budget, expires)
where k.provider = 'pgtap-up-jobs' and k.label = v.label;
insert into tollgate.provider_key_usage_daily (provider, label, day, shard, calls, cost_usd) values
  ('pgtap-up-jobs', 'spent', '2031-01-01', 0, 10, 1.20),
  ('pgtap-up-jobs', 'thrifty', '2031-01-01', 0, 10, 1.00);
insert into tollgate.upstream_queue (request_id, provider, priority, rank, user_id, enqueued_at, wait_until, last_seen_at)
values
  (pg_temp.rid(201), 'pgtap-up-jobs', 'normal', 1, (select id from ids where name = 'user'), pg_temp.at(-30), pg_temp.at(-10), pg_temp.at(-10)),
  (pg_temp.rid(202), 'pgtap-up-jobs', 'normal', 1, (select id from ids where name = 'user'), pg_temp.at(-2), pg_temp.at(18), pg_temp.at(-1));
select is(tollgate.check_provider_keys(pg_temp.at(0)), 3, 'the job raises three alerts');
select results_eq(
  $$select kind, details ->> 'label', spend_usd, limit_usd from tollgate.budget_alerts
    where details ->> 'provider' = 'pgtap-up-jobs' order by kind, details ->> 'label'$$,
  $$values ('provider_key_budget'::text, 'spent'::text, 1.20::numeric, 1.00::numeric),
           ('provider_key_expiring', 'expired', null, null),
           ('provider_key_expiring', 'soon', null, null)$$,
  'a key at its daily budget; a key expiring within 14 days; an expired key');
select ok((select message like '%expired on 2031-01-01%' from tollgate.budget_alerts where details ->> 'label' = 'expired')
    and (select message like '%expires on 2031-01-11 (in 10 days)%' from tollgate.budget_alerts where details ->> 'label' = 'soon'),
  'the messages say expired, or in how many days');
select is(array[pg_temp.ticket(201), pg_temp.ticket(202)], array[false, true], 'the job dropped the stale ticket only');
select is(tollgate.check_provider_keys(pg_temp.at(60)), 0, 'running the job again raises nothing');

-- ----------------------------------------------------------------------------
-- Privileges
-- ----------------------------------------------------------------------------
select ok(not bool_or(has_function_privilege(r.role, f.fn, 'execute')),
  'no client role may execute any function of the upstream migration')
from unnest(array['anon', 'authenticated']) as r (role)
cross join unnest(array['tollgate.register_provider_keys(jsonb)', 'tollgate.revive_provider_key(text,text)',
  'tollgate.leave_queue(uuid)', 'tollgate.check_provider_keys(timestamptz)',
  'tollgate.upstream_admission(uuid,uuid,text,text,integer,timestamptz)',
  'tollgate.record_upstream(jsonb,timestamptz)', 'tollgate.provider_room(text,integer,timestamptz)',
  'tollgate.key_headroom(tollgate.provider_keys,bigint,integer,timestamptz)',
  'tollgate.key_usable(tollgate.provider_keys,timestamptz)', 'tollgate.key_in_flight(text,text)']) as f (fn);
select ok(not bool_or(has_table_privilege(r.role, c.rel, 'select')),
  'no client role may read the upstream tables or views')
from unnest(array['anon', 'authenticated']) as r (role)
cross join unnest(array['tollgate.upstream_settings', 'tollgate.priority_classes', 'tollgate.provider_keys',
  'tollgate.provider_key_usage_daily', 'tollgate.upstream_queue', 'public.provider_key_spend',
  'public.provider_headroom']) as c (rel);
set local role authenticated;
select throws_ok('select * from public.provider_headroom', '42501', null, 'authenticated users cannot read provider_headroom');
select throws_ok('select * from public.provider_key_spend', '42501', null, 'nor provider_key_spend');
select throws_ok($$select tollgate.leave_queue('00000000-0000-4000-8000-000000000001')$$, '42501', null,
  'nor leave the queue');
reset role;
set local role anon;
select throws_ok('select * from public.provider_headroom', '42501', null, 'anon cannot read provider_headroom');
select throws_ok($$select tollgate.register_provider_keys('[]')$$, '42501', null, 'nor register keys');
reset role;
select ok(bool_and(has_function_privilege('service_role', f.fn, 'execute')),
  'service_role may call the upstream API: register and revive keys, leave the queue, the keys'' job')
from unnest(array['tollgate.register_provider_keys(jsonb)', 'tollgate.revive_provider_key(text,text)',
  'tollgate.leave_queue(uuid)', 'tollgate.check_provider_keys(timestamptz)']) as f (fn);
set local role service_role;
select lives_ok('select * from public.provider_key_spend', 'service_role reads public.provider_key_spend');
select lives_ok('select * from public.provider_headroom', 'service_role reads public.provider_headroom');
reset role;

select * from finish();
rollback;
