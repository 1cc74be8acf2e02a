-- ============================================================================
-- The budget guard: threshold alerts exactly once, the throttle set at 90% and
-- cleared by a raised budget or a new month, the spend breaker and its recovery,
-- user flags, and both delivery paths (the function's claim/record, and pg_net —
-- played here by a stand-in `net` schema, since Debian has no pg_net). The jobs'
-- SQL is called directly, with generated history: no waiting for the clock.
-- ============================================================================
begin;
select plan(82);

\ir helpers.psql

-- A budget's month-to-date spend, as settlement would have left it in the rollup.
create function pg_temp.spend(budget_id bigint, amount numeric, month date default date_trunc('month', now() at time zone 'UTC')::date)
returns void
language sql
as $$
  delete from tollgate.budget_settlements as s where s.budget_id = spend.budget_id and s.period_start = spend.month;
  insert into tollgate.budget_settlements (budget_id, period_start, shard, spent_usd, released_usd, calls)
  values (spend.budget_id, spend.month, 3, amount, amount, 1);
$$;

-- Calls in the log (the anomaly job reads ai_api_calls): `count` calls of `cost` USD
-- each, `minutes_ago` minutes before now.
create function pg_temp.calls(count integer, cost numeric, minutes_ago numeric, user_id uuid default null)
returns void
language sql
as $$
  insert into public.ai_api_calls (
    created_at, user_id, feature, provider, model, input_tokens, output_tokens, latency_ms, estimated_cost, request_id)
  select now() - make_interval(secs => minutes_ago * 60), calls.user_id, 'default', 'openai', 'gpt-4o-mini', 100, 50,
    500, cost, gen_random_uuid()
  from generate_series(1, count);
$$;

create function pg_temp.global_id()
returns bigint
language sql
as $$
  select id from tollgate.budgets where scope = 'global'
$$;

-- A clean slate (rolled back at the end).
delete from tollgate.budget_alerts;
update tollgate.budgets set monthly_limit_usd = 100, thresholds = '{50,75,90,100}', hard_cap = true, exempt_critical = true
where scope = 'global';
update tollgate.gateway_state set throttled = false, throttle_reason = null, throttled_since = null, throttled_by = null,
  anomaly_paused = false, anomaly_reason = null, anomaly_paused_since = null, anomaly_paused_by = null;
insert into tollgate.features (name, priority) values ('guarded', 'normal');
insert into tollgate.budgets (scope, feature, monthly_limit_usd, hard_cap) values ('feature', 'guarded', 10, false);

-- ----------------------------------------------------------------------------
-- Schema, privileges, schedules
-- ----------------------------------------------------------------------------
select ok((select bool_and(c.relrowsecurity) from pg_class as c
    where c.oid in ('tollgate.budget_alerts'::regclass, 'tollgate.user_flags'::regclass,
      'tollgate.guard_settings'::regclass, 'tollgate.spend_hourly'::regclass)),
  'every table of the guard has row level security');
select ok((select c.reloptions @> '{security_invoker=true}' from pg_class as c where c.oid = 'public.budget_alerts'::regclass),
  'public.budget_alerts is a security_invoker view');
set local role anon;
select throws_ok('select * from public.budget_alerts', '42501', null, 'anon cannot read the alerts');
reset role;
set local role authenticated;
select throws_ok('select * from public.budget_alerts', '42501', null, 'authenticated users cannot read the alerts');
select throws_ok('select tollgate.check_budgets()', '42501', null, 'nor run the jobs');
reset role;
select ok(not bool_or(has_function_privilege(r.role, f.fn, 'execute')),
  'no client role may execute any function of the guard')
from unnest(array['anon', 'authenticated']) as r (role)
cross join unnest(array['tollgate.check_budgets(timestamptz)', 'tollgate.check_anomalies(timestamptz)',
  'tollgate.deliver_alerts(integer)', 'tollgate.claim_alerts(integer,integer)',
  'tollgate.record_alert_delivery(bigint,text)', 'tollgate.clear_anomaly(interval)',
  'tollgate.clear_user_flag(uuid,interval)', 'tollgate.database_delivers_alerts()']) as f (fn);
select is(
  (select string_agg(format('%s | %s | %s', jobname, schedule, command), E'\n' order by jobname)
   from cron.job where jobname in ('tollgate-check-budgets', 'tollgate-check-anomalies', 'tollgate-deliver-alerts')),
  E'tollgate-check-anomalies | * * * * * | select tollgate.check_anomalies()\n'
    'tollgate-check-budgets | * * * * * | select tollgate.check_budgets()\n'
    'tollgate-deliver-alerts | * * * * * | select tollgate.deliver_alerts()',
  'the three jobs run every minute (five-field schedules)');

-- ----------------------------------------------------------------------------
-- Thresholds: each once per budget and month
-- ----------------------------------------------------------------------------
select pg_temp.spend(pg_temp.global_id(), 10);
select is((tollgate.check_budgets() ->> 'alerts')::integer, 0, 'at 10% of the global budget: no alert');

select pg_temp.spend(pg_temp.global_id(), 55);
select is((tollgate.check_budgets() ->> 'alerts')::integer, 1, 'at 55%: one alert');
select results_eq($$select kind, severity, budget, threshold, spend_usd, limit_usd from tollgate.budget_alerts$$,
  $$values ('budget'::text, 'info'::text, 'global'::text, 50, 55::numeric, 100::numeric)$$,
  'the 50% alert is `info`, with the budget, the spend and the limit');
select is((tollgate.check_budgets() ->> 'alerts')::integer, 0, 'running the job again raises nothing');
select is((select throttled from tollgate.gateway_state), false, 'no throttle under 90%');

-- The job ran late: spend went from 55% to 95% between two runs.
select pg_temp.spend(pg_temp.global_id(), 95);
select is((tollgate.check_budgets() ->> 'alerts')::integer, 2, 'a late run raises every threshold passed meanwhile');
select results_eq($$select threshold, severity from tollgate.budget_alerts where kind = 'budget' order by threshold$$,
  $$values (50, 'info'::text), (75, 'investigate'::text), (90, 'throttle'::text)$$,
  '50 info, 75 investigate, 90 throttle: each exactly once');
select is((select count(*)::integer from tollgate.budget_alerts where kind = 'throttle'), 0,
  'the 90% alert itself announces the throttle (no second message)');
select results_eq(
  $$select throttled, throttled_by, throttle_reason from tollgate.gateway_state$$,
  $$values (true, 'budget_guard'::text, 'the global budget is at 95% of its 100.00 USD monthly limit'::text)$$,
  'at 90% the job sets the throttle; the reason names the budget');
select matches((select message from tollgate.budget_alerts where threshold = 90),
  'THROTTLE ON: background features are refused, normal features run in restricted mode',
  'the 90% alert says what the throttle does');
select ok((select p ? 'text' and p ->> 'budget' = 'global' and (p ->> 'threshold')::integer = 90
      and (p ->> 'spend')::numeric = 95 and (p ->> 'limit')::numeric = 100 and (p ->> 'projection')::numeric > 0
    from (select tollgate.alert_payload(a) as p from tollgate.budget_alerts as a where a.threshold = 90) as x),
  'the webhook payload is Slack-compatible text plus budget, threshold, spend, limit and projection');
select is((select count(*)::integer from (select tollgate.check_budgets() from generate_series(1, 3)) as runs), 3,
  'three more runs …');
select is((select count(*)::integer from tollgate.budget_alerts), 3, '… and still three alerts');

-- A raised budget clears the throttle.
update tollgate.budgets set monthly_limit_usd = 200 where scope = 'global';
select is(tollgate.check_budgets() ->> 'throttle_changed', 'true', 'raising the budget to 200 USD …');
select results_eq($$select throttled, throttled_by, throttle_reason from tollgate.gateway_state$$,
  $$values (false, null::text, null::text)$$, '… clears the throttle');
select results_eq($$select kind, severity from tollgate.budget_alerts where kind like 'throttle%'$$,
  $$values ('throttle_cleared'::text, 'resolved'::text)$$, 'and says so');

-- Lowered again in the same month: the throttle comes back, announced on its own.
-- (A second later: within one test transaction now() stands still, and a flag change
-- is keyed by the instant it happened.)
update tollgate.budgets set monthly_limit_usd = 100 where scope = 'global';
select is(tollgate.check_budgets(now() + interval '1 second') ->> 'throttled', 'true', 'lowering it again throttles again');
select is((select count(*)::integer from tollgate.budget_alerts where kind = 'throttle'), 1,
  'with a `throttle` alert, since the 90% alert of the month was already sent');

-- A new month starts at zero: the throttle clears.
select is(tollgate.check_budgets(date_trunc('month', now()) + interval '1 month 1 day') ->> 'throttled', 'false',
  'a new month clears the throttle');
select is((select count(*)::integer from tollgate.budget_alerts where period_start > now()), 1,
  'and raises no threshold alert for the new month (only the throttle_cleared one)');

-- 100% with a hard cap.
select pg_temp.spend(pg_temp.global_id(), 101);
select lives_ok('select tollgate.check_budgets()', 'at 101% …');
select results_eq($$select severity, threshold from tollgate.budget_alerts where threshold = 100$$,
  $$values ('hard_cap'::text, 100)$$, '… a `hard_cap` alert');
select matches((select message from tollgate.budget_alerts where threshold = 100),
  'HARD CAP: admission now refuses this budget''s requests \(budget_exceeded\), except critical features',
  'which says that requests are now refused, critical features excepted');

-- A feature budget alerts at its thresholds but never throttles the gateway.
select pg_temp.spend(pg_temp.global_id(), 10);
select tollgate.check_budgets();
select pg_temp.spend((select id from tollgate.budgets where feature = 'guarded'), 10.5);
select is((tollgate.check_budgets() ->> 'alerts')::integer, 4, 'a feature budget at 105%: four alerts');
select is((select throttled from tollgate.gateway_state), false, 'a feature budget does not throttle the gateway');
select matches((select message from tollgate.budget_alerts where budget = 'feature guarded' and threshold = 100),
  'no hard cap, so calls continue', 'without a hard cap the 100% alert says calls continue');

-- A throttle set by an operator is left alone.
update tollgate.gateway_state set throttled = true, throttle_reason = 'maintenance', throttled_by = null;
select tollgate.check_budgets();
select is((select throttled from tollgate.gateway_state), true, 'the job never clears a throttle an operator set');
update tollgate.gateway_state set throttled = false, throttle_reason = null;

-- ----------------------------------------------------------------------------
-- The spend breaker
-- ----------------------------------------------------------------------------
-- pg_cron runs check_anomalies() on this database every minute too: from here to the
-- rollback its writes wait, and what it wrote before is cleared.
lock table tollgate.spend_hourly in exclusive mode;
delete from tollgate.spend_hourly;
-- Eight days of history at 0.50 USD per hour, up to the last completed hour.
insert into tollgate.spend_hourly (hour, calls, cost_usd)
select h, 10, 0.5
from generate_series(date_trunc('hour', now()) - interval '8 days', date_trunc('hour', now()) - interval '1 hour',
  interval '1 hour') as h;

select results_eq($$select x ->> 'basis', (x ->> 'baseline_usd_per_hour')::numeric, (x ->> 'anomaly_paused')::boolean
    from (select tollgate.check_anomalies() as x) as r$$,
  $$values ('trailing week, same hour'::text, 0.5::numeric, false)$$,
  'with a week of history the baseline is this hour''s rate over the trailing week; quiet: no pause');

-- 1.00 USD in the last ten minutes: 6 USD/h, over 3 x max(0.50, floor 1.00).
select pg_temp.calls(10, 0.1, 3);
select is(tollgate.check_anomalies() ->> 'anomaly_paused', 'true', 'spend at 6x its baseline trips the breaker');
select results_eq($$select anomaly_paused, anomaly_paused_by from tollgate.gateway_state$$,
  $$values (true, 'budget_guard'::text)$$, 'non-critical features are paused (gateway_state.anomaly_paused)');
select matches((select anomaly_reason from tollgate.gateway_state), '^spend of the last 10 minutes runs at 6\.00 USD/h, more than 3x the normal 1\.00 USD/h$',
  'the reason gives the rate and the factor');
select results_eq($$select kind, severity from tollgate.budget_alerts where kind like 'anomaly%'$$,
  $$values ('anomaly'::text, 'anomaly'::text)$$, 'and an alert is raised');
select tollgate.check_anomalies();
select is((select count(*)::integer from tollgate.budget_alerts where kind like 'anomaly%'), 1,
  'once: running again raises nothing more');

-- Eleven minutes later the burst has left the window.
select is(tollgate.check_anomalies(now() + interval '11 minutes') ->> 'anomaly_paused', 'false',
  'when the rate is normal again the breaker clears itself');
select results_eq($$select anomaly_paused, anomaly_paused_by, anomaly_reason from tollgate.gateway_state$$,
  $$values (false, null::text, null::text)$$, 'the flag is off');
select is((select count(*)::integer from tollgate.budget_alerts where kind = 'anomaly_cleared'), 1,
  'with an `anomaly_cleared` alert');

-- An operator clears it by hand and snoozes it.
select tollgate.check_anomalies();
select is(tollgate.clear_anomaly(), true, 'tripped again; select tollgate.clear_anomaly() turns it off');
select is(tollgate.check_anomalies() ->> 'anomaly_paused', 'false', 'and it does not trip again while snoozed');
update tollgate.gateway_state set anomaly_snoozed_until = null;

-- Short history: the trailing day.
delete from tollgate.spend_hourly where hour < now() - interval '30 hours';
select results_eq($$select x ->> 'basis', (x ->> 'anomaly_paused')::boolean from (select tollgate.check_anomalies() as x) as r$$,
  $$values ('trailing day'::text, true)$$, 'with less than a week of history the baseline is the trailing day');

-- No history: no normal to compare with; the breaker is not armed (and lets go).
delete from tollgate.spend_hourly;
select results_eq($$select x ->> 'basis', (x ->> 'anomaly_paused')::boolean from (select tollgate.check_anomalies() as x) as r$$,
  $$values ('none (less than a day of history)'::text, false)$$,
  'without a day of history the breaker is not armed');

-- A pause set by an operator is left alone.
update tollgate.gateway_state set anomaly_paused = true, anomaly_reason = 'by hand', anomaly_paused_by = null;
select tollgate.check_anomalies();
select is((select anomaly_paused from tollgate.gateway_state), true, 'the job never clears a pause an operator set');
update tollgate.gateway_state set anomaly_paused = false, anomaly_reason = null;
delete from public.ai_api_calls;

-- The hourly rollup fills itself from the log, one completed hour at a time.
select pg_temp.calls(4, 0.25, 60 * 26);
select tollgate.check_anomalies();
select results_eq(
  $$select cost_usd, calls::integer from tollgate.spend_hourly where hour = date_trunc('hour', now() - interval '26 hours')$$,
  $$values (1.0::numeric, 4)$$, 'completed hours are rolled up from ai_api_calls');
select ok((select count(*) >= 24 and bool_and(hour < now() - interval '1 hour') from tollgate.spend_hourly),
  'from the first call on, quiet hours included, never the hour still running');
delete from public.ai_api_calls;

-- ----------------------------------------------------------------------------
-- Users far above their own baseline
-- ----------------------------------------------------------------------------
create temporary table people (name text primary key, id uuid) on commit drop;
insert into people values ('steady', pg_temp.new_user('steady@guard.test')), ('busy', pg_temp.new_user('busy@guard.test'));
-- steady: 50 calls a day for a week; busy: 2,000 a day.
insert into public.user_usage_daily (user_id, day, calls)
select p.id, (now() at time zone 'UTC')::date - d, case p.name when 'steady' then 50 else 2000 end
from people as p cross join generate_series(1, 7) as d;
-- Both make 300 calls in the last hour (7,200 a day).
select pg_temp.calls(300, 0, 30, (select id from people where name = 'steady'));
select pg_temp.calls(300, 0, 30, (select id from people where name = 'busy'));

select is((tollgate.check_anomalies() ->> 'users_flagged')::integer, 1, 'one user is flagged');
select results_eq($$select f.user_id, f.flagged, f.calls_last_hour::integer, f.baseline_calls_per_day from tollgate.user_flags as f$$,
  $$select id, true, 300, 50.00::numeric from people where name = 'steady'$$,
  'the one at 144x their baseline (50/day to 7,200/day), not the one at 3.6x');
select results_eq($$select kind, user_id from tollgate.budget_alerts where kind like 'user%'$$,
  $$select 'user_anomaly'::text, id from people where name = 'steady'$$, 'with an alert naming the user');
select matches((select message from tollgate.budget_alerts where kind = 'user_anomaly'), 'select tollgate.clear_user_flag',
  'that says how to clear the flag');
select tollgate.check_anomalies();
select is((select count(*)::integer from tollgate.budget_alerts where kind like 'user%'), 1, 'once');

select is((tollgate.check_anomalies(now() + interval '61 minutes') ->> 'users_cleared')::integer, 1,
  'an hour later the rate is normal and the flag clears itself');
select results_eq($$select flagged, kind from tollgate.user_flags, tollgate.budget_alerts where kind = 'user_anomaly_cleared'$$,
  $$values (false, 'user_anomaly_cleared'::text)$$, 'with an alert');

select tollgate.check_anomalies();
select is(tollgate.clear_user_flag((select id from people where name = 'steady')), true,
  'flagged again; select tollgate.clear_user_flag(user) clears it by hand');
select is((tollgate.check_anomalies() ->> 'users_flagged')::integer, 0, 'and the user is not flagged again while snoozed');
delete from public.ai_api_calls;

-- ----------------------------------------------------------------------------
-- Delivery by the function: claim with a lease, record, retry with backoff
-- ----------------------------------------------------------------------------
select is(tollgate.database_delivers_alerts(), false, 'without pg_net the function delivers');
create temporary table claimed on commit drop as select * from tollgate.claim_alerts(100);
select is((select count(*) from claimed), (select count(*) from tollgate.budget_alerts where delivered_at is null),
  'claim_alerts hands out every due alert');
select ok((select bool_and(payload ? 'text' and payload ? 'budget' and payload ? 'threshold' and payload ? 'spend'
    and payload ? 'limit' and payload ? 'projection' and (payload ->> 'alert_id')::bigint = alert_id) from claimed),
  'each with its webhook payload');
select is((select count(*)::integer from tollgate.claim_alerts(100)), 0, 'leased alerts are not handed out twice');

select is(tollgate.record_alert_delivery((select min(alert_id) from claimed), 'HTTP 500'), true, 'a failed post …');
select results_eq(
  $$select attempts, last_error, next_attempt_at = now() + interval '1 minute', delivered_at is null
    from tollgate.budget_alerts where id = (select min(alert_id) from claimed)$$,
  $$values (1, 'HTTP 500'::text, true, true)$$, '… is kept, with its error, due again in a minute');
select results_eq($$values (tollgate.alert_retry_delay(2)), (tollgate.alert_retry_delay(4)), (tollgate.alert_retry_delay(40))$$,
  $$values (interval '2 minutes'), (interval '8 minutes'), (interval '1 hour')$$, 'backoff doubles, up to an hour');
update tollgate.budget_alerts set next_attempt_at = now(), lease_until = now() where id in (select alert_id from claimed);
select is((select count(*) from tollgate.claim_alerts(100)), (select count(*) from claimed),
  'when due again (or when a lease ran out) the alerts are claimed again: none is lost');
select is(tollgate.record_alert_delivery((select min(alert_id) from claimed)), true, 'a successful post …');
select results_eq(
  $$select attempts, delivered_via, delivered_at is not null from tollgate.budget_alerts where id = (select min(alert_id) from claimed)$$,
  $$values (2, 'function'::text, true)$$, '… marks the alert delivered');
select is(tollgate.record_alert_delivery((select min(alert_id) from claimed)), false, 'recording it twice changes nothing');

-- ----------------------------------------------------------------------------
-- Delivery by the database through pg_net (a stand-in `net` schema)
-- ----------------------------------------------------------------------------
create schema net;
create table net._http_response (id bigint primary key, status_code integer, content text, timed_out boolean,
  error_msg text, created timestamptz not null default now());
create table net.sent (id bigint generated always as identity primary key, url text, body jsonb, headers jsonb);
create function net.http_post(url text, body jsonb default '{}', params jsonb default '{}',
  headers jsonb default '{}', timeout_milliseconds integer default 5000)
returns bigint
language sql
as $$
  insert into net.sent (url, body, headers) values (url, body, headers) returning id
$$;

select is(tollgate.database_delivers_alerts(), false, 'pg_net alone is not enough: the webhook row must be set');
update tollgate.guard_settings set webhook_url = 'https://hooks.slack.test/services/T0/B0/x';
select is(tollgate.database_delivers_alerts(), true, 'with pg_net and guard_settings.webhook_url the database delivers');
select is((select count(*)::integer from tollgate.claim_alerts(100)), 0, 'and the function is handed nothing');

update tollgate.budget_alerts set delivered_at = now() where delivered_at is null;
insert into tollgate.budget_alerts (dedup_key, kind, severity, budget, threshold, message)
values ('test:pg_net', 'budget', 'info', 'global', 50, 'hello from the database');
select is(tollgate.deliver_alerts() ->> 'sent', '1', 'deliver_alerts posts the due alert through net.http_post');
select results_eq($$select url, body ->> 'text', body ->> 'budget' from net.sent$$,
  $$values ('https://hooks.slack.test/services/T0/B0/x'::text, 'hello from the database'::text, 'global'::text)$$,
  'to the configured webhook, with the payload');
select is(tollgate.deliver_alerts() - 'pruned', '{"via": "pg_net", "sent": 0, "failed": 0, "delivered": 0}'::jsonb,
  'while the answer is pending nothing is sent twice');
insert into net._http_response (id, status_code) select max(id), 500 from net.sent;
select is(tollgate.deliver_alerts() ->> 'failed', '1', 'an HTTP 500 answer …');
select results_eq($$select last_error, delivered_at is null, next_attempt_at > now() from tollgate.budget_alerts where dedup_key = 'test:pg_net'$$,
  $$values ('HTTP 500'::text, true, true)$$, '… keeps the alert for a retry after the backoff');
update tollgate.budget_alerts set next_attempt_at = now() where dedup_key = 'test:pg_net';
select is(tollgate.deliver_alerts() ->> 'sent', '1', 'when due it is posted again');
insert into net._http_response (id, status_code) select max(id), 200 from net.sent;
select is(tollgate.deliver_alerts() ->> 'delivered', '1', 'a 2xx answer …');
select results_eq($$select attempts, delivered_via, delivered_at is not null from tollgate.budget_alerts where dedup_key = 'test:pg_net'$$,
  $$values (2, 'pg_net'::text, true)$$, '… marks it delivered, after two attempts');

-- ----------------------------------------------------------------------------
-- A gateway without calls has no hourly history (not eight days of quiet hours)
-- ----------------------------------------------------------------------------
delete from public.ai_api_calls;
delete from tollgate.spend_hourly;
select tollgate.check_anomalies();
select is((select count(*) from tollgate.spend_hourly), 0::bigint, 'with no calls, the job writes no hourly spend');

select * from finish();
rollback;
