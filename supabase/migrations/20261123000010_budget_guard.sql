-- ============================================================================
-- Tollgate 10: the budget guard — alerts, the throttle, the anomaly breaker
--
-- Three pg_cron jobs watch the money and flip the flags that tollgate.admit()
-- already obeys (tollgate.gateway_state); every change worth telling a person
-- becomes a row in tollgate.budget_alerts, a pg_notify and a webhook delivery.
--
--   tollgate.check_budgets()    every minute. Month-to-date spend per budget from
--                               the budget_settlements rollup; one alert per
--                               threshold crossed (50 info, 75 investigate, 90
--                               throttle, 100 hard cap — the budget's `thresholds`),
--                               exactly once per budget and month. Sets the
--                               throttle at guard_settings.throttle_percent (90) of
--                               the GLOBAL budget and clears it when the spend is
--                               back under it (a new month, a raised budget).
--   tollgate.check_anomalies()  every minute. Spend rate of the last 10 minutes
--                               against its baseline (formula below): over 3x
--                               pauses non-critical features (anomaly_paused);
--                               a user whose request rate is far above their own
--                               baseline is flagged (tollgate.user_flags). Both
--                               clear themselves when the rate is normal again.
--   tollgate.deliver_alerts()   every minute. When the database has pg_net and
--                               guard_settings.webhook_url is set (hosted
--                               Supabase), POSTs due alerts to the webhook and
--                               reads the answers; otherwise the `ai` function
--                               delivers them (tollgate.claim_alerts) to its
--                               TOLLGATE_ALERT_WEBHOOK_URL secret.
--
-- EXACTLY ONCE. Every alert has a dedup_key, unique in the table, and is written
-- with INSERT … ON CONFLICT (dedup_key) DO NOTHING: a threshold's key is
-- `budget:<budget id>:<month>:<threshold>`, a flag change's key names the flag and
-- the instant it was set. However late, often or concurrently a job runs, a second
-- insert of the same key does nothing (a concurrent one waits for the first to
-- commit, then does nothing). Each job also takes a transaction-scoped advisory
-- lock, so that two runs do not interleave their read-then-flip of a flag: the
-- second waits, then sees the first one's work.
--
-- AT LEAST ONCE. An alert stays undelivered (delivered_at null) until a webhook
-- answered 2xx. A failed attempt sets next_attempt_at with exponential backoff
-- (1, 2, 4 … minutes, at most an hour) and is retried for ever; a delivery that
-- never reports back (a crashed function, a lost pg_net answer) is retried when its
-- lease ends. So the receiver may see an alert twice (dedupe on `alert_id`), never
-- zero times.
--
-- Who may call the jobs: postgres (pg_cron runs them as postgres; the ai function
-- connects as postgres) and service_role. Never clients. Operators configure the
-- guard with SQL (tollgate.guard_settings) and clear flags by hand with
-- tollgate.clear_anomaly() / tollgate.clear_user_flag().
-- ============================================================================

-- ----------------------------------------------------------------------------
-- Settings: the webhook for pg_net and the guard's numbers (one row)
-- ----------------------------------------------------------------------------
create table tollgate.guard_settings (
  id boolean primary key default true check (id),
  webhook_url text check (webhook_url ~ '^https?://'),
  throttle_percent integer default 90 check (throttle_percent between 1 and 1000),
  anomaly_factor numeric(8, 2) not null default 3 check (anomaly_factor > 1),
  anomaly_window_minutes integer not null default 10 check (anomaly_window_minutes between 1 and 60),
  anomaly_min_usd_per_hour numeric(14, 6) not null default 1 check (anomaly_min_usd_per_hour >= 0),
  user_anomaly_factor numeric(8, 2) not null default 10 check (user_anomaly_factor > 1),
  user_anomaly_min_calls_per_day integer not null default 200 check (user_anomaly_min_calls_per_day >= 0),
  updated_at timestamptz not null default now()
);
comment on table tollgate.guard_settings is
  'The budget guard''s settings (one row): where the database delivers alerts (pg_net) and the numbers of the throttle and the anomaly breakers. Edit with SQL, e.g. update tollgate.guard_settings set webhook_url = ''https://hooks.slack.com/…''.';
comment on column tollgate.guard_settings.id is 'Always true: the table holds exactly one row.';
comment on column tollgate.guard_settings.webhook_url is
  'Slack-compatible webhook the DATABASE posts alerts to through pg_net (hosted Supabase). Null, or no pg_net: the ai function delivers them to its TOLLGATE_ALERT_WEBHOOK_URL secret instead. A secret: this table is closed to clients.';
comment on column tollgate.guard_settings.throttle_percent is
  'Percent of the global budget''s monthly limit at which check_budgets() turns the throttle on (and below which it turns its throttle off). Null: the guard never throttles.';
comment on column tollgate.guard_settings.anomaly_factor is
  'The spend breaker trips when the spend rate of the last anomaly_window_minutes exceeds this many times its baseline.';
comment on column tollgate.guard_settings.anomaly_window_minutes is 'How many recent minutes the spend rate is measured over.';
comment on column tollgate.guard_settings.anomaly_min_usd_per_hour is
  'Floor of the spend baseline, USD per hour: a rate below anomaly_factor x this never trips the breaker (tiny spend is not an emergency).';
comment on column tollgate.guard_settings.user_anomaly_factor is
  'A user is flagged when their request rate of the last hour (per day) exceeds this many times their own daily average of the previous 7 days.';
comment on column tollgate.guard_settings.user_anomaly_min_calls_per_day is
  'Floor of a user''s baseline, calls per day (new users have none): the rate must exceed user_anomaly_factor x this too.';
comment on column tollgate.guard_settings.updated_at is 'When the row was last changed.';

insert into tollgate.guard_settings (id) values (true);

create trigger guard_settings_touch before update on tollgate.guard_settings
  for each row execute function tollgate.touch_updated_at();

-- ----------------------------------------------------------------------------
-- Who set a flag: the jobs clear only what they set
-- ----------------------------------------------------------------------------
-- admit() reads gateway_state by column name, so new columns change nothing for it.
-- A flag set by hand in Studio leaves these null: the jobs never clear it.
alter table tollgate.gateway_state
  add column throttled_by text check (throttled_by = 'budget_guard'),
  add column anomaly_paused_by text check (anomaly_paused_by = 'budget_guard'),
  add column anomaly_snoozed_until timestamptz;
comment on column tollgate.gateway_state.throttled_by is
  '`budget_guard` when check_budgets() set the throttle (it clears it again); null when an operator set it (only an operator clears it).';
comment on column tollgate.gateway_state.anomaly_paused_by is
  '`budget_guard` when check_anomalies() tripped the breaker (it clears it again); null when an operator set it.';
comment on column tollgate.gateway_state.anomaly_snoozed_until is
  'Set by tollgate.clear_anomaly(): the spend breaker does not trip again before this instant.';

-- ----------------------------------------------------------------------------
-- Alerts: what happened, for Studio, pg_notify and the webhook
-- ----------------------------------------------------------------------------
create table tollgate.budget_alerts (
  id bigint generated always as identity primary key,
  dedup_key text not null,
  kind text not null check (kind in (
    'budget', 'throttle', 'throttle_cleared', 'anomaly', 'anomaly_cleared', 'user_anomaly', 'user_anomaly_cleared')),
  severity text not null check (severity in ('info', 'investigate', 'throttle', 'hard_cap', 'anomaly', 'resolved')),
  budget_id bigint references tollgate.budgets (id) on delete set null,
  budget text,
  period_start date,
  threshold integer,
  spend_usd numeric(18, 6),
  limit_usd numeric(14, 6),
  projection_usd numeric(18, 6),
  user_id uuid,
  message text not null,
  details jsonb not null default '{}',
  created_at timestamptz not null default now(),
  next_attempt_at timestamptz not null default now(),
  attempts integer not null default 0 check (attempts >= 0),
  last_error text,
  lease_until timestamptz,
  net_request_id bigint,
  delivered_at timestamptz,
  delivered_via text check (delivered_via in ('pg_net', 'function')),
  constraint budget_alerts_dedup_key_key unique (dedup_key)
);
-- The delivery queue: only the few rows not delivered yet.
create index budget_alerts_undelivered_idx on tollgate.budget_alerts (next_attempt_at, id) where delivered_at is null;
create index budget_alerts_created_at_idx on tollgate.budget_alerts (created_at);
comment on table tollgate.budget_alerts is
  'Alerts of the budget guard, one row per event, written exactly once (unique dedup_key) by check_budgets() and check_anomalies(), announced with pg_notify(''tollgate_alerts'') and delivered to a webhook at least once. Studio: public.budget_alerts. Delivered rows are kept 180 days.';
comment on column tollgate.budget_alerts.id is 'Alert id (`alert_id` in the webhook payload: receivers dedupe on it).';
comment on column tollgate.budget_alerts.dedup_key is
  'What makes the event unique: budget:<budget id>:<month>:<threshold>, or the flag and the instant it changed. INSERT … ON CONFLICT DO NOTHING on it makes every alert exactly-once.';
comment on column tollgate.budget_alerts.kind is
  'budget (a threshold crossed), throttle / throttle_cleared, anomaly / anomaly_cleared (spend breaker), user_anomaly / user_anomaly_cleared; and from the upstream migration provider_rate_limited, provider_key_dead, provider_key_budget, provider_key_expiring.';
comment on column tollgate.budget_alerts.severity is
  'info (<75%), investigate (75-89%), throttle (90-99%), hard_cap (>=100%), anomaly (a breaker tripped), resolved (a flag cleared).';
comment on column tollgate.budget_alerts.budget_id is 'The budget (budget and throttle alerts).';
comment on column tollgate.budget_alerts.budget is 'The budget''s name when the alert was raised: `global` or `feature <name>`.';
comment on column tollgate.budget_alerts.period_start is 'First day of the UTC month the alert is about.';
comment on column tollgate.budget_alerts.threshold is 'The threshold crossed, % of the limit (budget alerts).';
comment on column tollgate.budget_alerts.spend_usd is 'Month-to-date spend of the budget when the alert was raised, USD (anomaly alerts: spend of the window).';
comment on column tollgate.budget_alerts.limit_usd is 'The budget''s monthly limit then, USD.';
comment on column tollgate.budget_alerts.projection_usd is 'Spend projected linearly to the end of the month, USD (as public.budget_status computes it).';
comment on column tollgate.budget_alerts.user_id is 'The user (user anomaly alerts).';
comment on column tollgate.budget_alerts.message is 'What happened and what it does, for people (the webhook''s `text`).';
comment on column tollgate.budget_alerts.details is 'The figures behind the alert (rates, baselines, percent), as JSON.';
comment on column tollgate.budget_alerts.created_at is 'When the alert was raised.';
comment on column tollgate.budget_alerts.next_attempt_at is 'Not delivered yet: the earliest time of the next delivery attempt (backoff after a failure).';
comment on column tollgate.budget_alerts.attempts is 'Delivery attempts started so far.';
comment on column tollgate.budget_alerts.last_error is 'Why the last attempt failed.';
comment on column tollgate.budget_alerts.lease_until is 'A delivery is in progress until then; after it, the alert may be claimed again.';
comment on column tollgate.budget_alerts.net_request_id is 'pg_net request of the attempt in flight (database delivery).';
comment on column tollgate.budget_alerts.delivered_at is 'When a webhook acknowledged the alert (2xx). Null: still to deliver.';
comment on column tollgate.budget_alerts.delivered_via is 'pg_net (the database) or function (the ai function).';

-- ----------------------------------------------------------------------------
-- User flags: users whose request volume is far above their own baseline
-- ----------------------------------------------------------------------------
-- Admission does NOT read this table: a flagged user is reported, not restricted
-- (their tier's windows, quotas and cost cap still bound them). To stop a user,
-- put them on a smaller tier (tollgate.user_plans).
create table tollgate.user_flags (
  user_id uuid primary key,
  flagged boolean not null default true,
  flagged_since timestamptz,
  reason text,
  calls_last_hour bigint,
  baseline_calls_per_day numeric(14, 2),
  cleared_at timestamptz,
  snoozed_until timestamptz,
  updated_at timestamptz not null default now()
);
create index user_flags_flagged_idx on tollgate.user_flags (user_id) where flagged;
comment on table tollgate.user_flags is
  'Users check_anomalies() flagged for a request rate far above their own baseline (seed 001: 50/day suddenly at 5,000). Cleared by the job when the rate is normal again, or by hand with tollgate.clear_user_flag(). Reported, not enforced: admission does not read it.';
comment on column tollgate.user_flags.user_id is 'The user (no foreign key: flags outlive nothing, and a flood must stay cheap).';
comment on column tollgate.user_flags.flagged is 'Currently flagged.';
comment on column tollgate.user_flags.flagged_since is 'When the current (or last) flag was raised.';
comment on column tollgate.user_flags.reason is 'The figures that raised it, for people.';
comment on column tollgate.user_flags.calls_last_hour is 'Calls in the hour before the flag was raised.';
comment on column tollgate.user_flags.baseline_calls_per_day is 'The user''s average calls per day over the 7 days before.';
comment on column tollgate.user_flags.cleared_at is 'When the last flag was cleared.';
comment on column tollgate.user_flags.snoozed_until is 'Set by clear_user_flag(): not flagged again before this instant.';
comment on column tollgate.user_flags.updated_at is 'Last change.';

-- ----------------------------------------------------------------------------
-- Hourly spend: the baseline of the spend breaker
-- ----------------------------------------------------------------------------
-- usage_daily has one row per day: too coarse for "this hour of the day". This is
-- filled by check_anomalies() itself, one row per completed UTC hour from the
-- first call on (settlement is untouched): a range scan of one hour of
-- ai_api_calls on its (created_at, provider) index, once per hour.
create table tollgate.spend_hourly (
  hour timestamptz primary key check (hour = date_trunc('hour', hour)),
  calls bigint not null default 0,
  cost_usd numeric(18, 6) not null default 0,
  computed_at timestamptz not null default now()
);
comment on table tollgate.spend_hourly is
  'Spend per completed UTC hour (of ai_api_calls.created_at), written once per hour by check_anomalies() 75 minutes after the hour began (settlements and expiries are in by then). Hours without calls are rows with 0: history of quiet. Kept 15 days.';
comment on column tollgate.spend_hourly.hour is 'Start of the UTC hour.';
comment on column tollgate.spend_hourly.calls is 'Calls admitted in the hour.';
comment on column tollgate.spend_hourly.cost_usd is 'Their cost, USD.';
comment on column tollgate.spend_hourly.computed_at is 'When the row was computed.';

-- ----------------------------------------------------------------------------
-- Row level security and privileges for every table of this file
-- ----------------------------------------------------------------------------
alter table tollgate.guard_settings enable row level security;
alter table tollgate.budget_alerts enable row level security;
alter table tollgate.user_flags enable row level security;
alter table tollgate.spend_hourly enable row level security;

create policy "No client access" on tollgate.guard_settings as restrictive for all to anon, authenticated
  using (false) with check (false);
create policy "No client access" on tollgate.budget_alerts as restrictive for all to anon, authenticated
  using (false) with check (false);
create policy "No client access" on tollgate.user_flags as restrictive for all to anon, authenticated
  using (false) with check (false);
create policy "No client access" on tollgate.spend_hourly as restrictive for all to anon, authenticated
  using (false) with check (false);

revoke all on tollgate.guard_settings, tollgate.budget_alerts, tollgate.user_flags, tollgate.spend_hourly
  from public, anon, authenticated;
grant select on tollgate.guard_settings, tollgate.budget_alerts, tollgate.user_flags, tollgate.spend_hourly
  to service_role;

-- ----------------------------------------------------------------------------
-- pg_notify on every new alert
-- ----------------------------------------------------------------------------
-- Channel `tollgate_alerts`; payload {alert_id, kind, severity, budget, threshold,
-- message} (well under NOTIFY's 8000-byte limit: the message is cut at 1000
-- characters). Sent at commit, so a rolled-back job announces nothing.
create function tollgate.notify_alert()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform pg_notify('tollgate_alerts', jsonb_build_object(
    'alert_id', new.id,
    'kind', new.kind,
    'severity', new.severity,
    'budget', new.budget,
    'threshold', new.threshold,
    'message', left(new.message, 1000))::text);
  return null;
end;
$$;
comment on function tollgate.notify_alert() is
  'Trigger: announces a new alert on channel tollgate_alerts (JSON: alert_id, kind, severity, budget, threshold, message).';
revoke all on function tollgate.notify_alert() from public, anon, authenticated;

create trigger budget_alerts_notify after insert on tollgate.budget_alerts
  for each row execute function tollgate.notify_alert();

-- ----------------------------------------------------------------------------
-- Helpers (internal)
-- ----------------------------------------------------------------------------
-- Money for people: 1234.5 -> '1234.50'.
create function tollgate.usd(amount numeric)
returns text
language sql
stable
set search_path = ''
as $$
  select to_char(round(coalesce(amount, 0), 2), 'FM999999999990.00')
$$;
comment on function tollgate.usd(numeric) is 'Internal: an amount of USD with two decimals, for alert messages.';
revoke all on function tollgate.usd(numeric) from public, anon, authenticated;

-- The webhook body of an alert: Slack's `text`, plus the structured fields.
create function tollgate.alert_payload(alert tollgate.budget_alerts)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'text', alert.message,
    'alert_id', alert.id,
    'kind', alert.kind,
    'severity', alert.severity,
    'budget', alert.budget,
    'threshold', alert.threshold,
    'spend', alert.spend_usd,
    'limit', alert.limit_usd,
    'projection', alert.projection_usd,
    'period', alert.period_start,
    'user_id', alert.user_id,
    'details', alert.details,
    'created_at', alert.created_at)
$$;
comment on function tollgate.alert_payload(tollgate.budget_alerts) is
  'The webhook body of an alert (Slack-compatible): {text, alert_id, kind, severity, budget, threshold, spend, limit, projection, period, user_id, details, created_at}. Slack shows `text` and ignores the rest.';
revoke all on function tollgate.alert_payload(tollgate.budget_alerts) from public, anon, authenticated;
grant execute on function tollgate.alert_payload(tollgate.budget_alerts) to service_role;

-- Backoff after the n-th failed attempt: 1, 2, 4, 8 … minutes, at most an hour.
create function tollgate.alert_retry_delay(attempts integer)
returns interval
language sql
immutable
set search_path = ''
as $$
  select least(interval '1 minute' * power(2, least(greatest(coalesce(attempts, 1) - 1, 0), 10)), interval '1 hour')
$$;
comment on function tollgate.alert_retry_delay(integer) is
  'Internal: wait before retrying an alert whose attempts-th delivery failed: 1, 2, 4 … minutes, capped at one hour.';
revoke all on function tollgate.alert_retry_delay(integer) from public, anon, authenticated;

-- Does the database deliver alerts itself? Only with pg_net AND a webhook row.
-- Checked at run time: pg_net may be enabled (or not) after this migration.
create function tollgate.database_delivers_alerts()
returns boolean
language sql
stable
security definer
set search_path = ''
as $$
  select exists (select from tollgate.guard_settings as s where s.webhook_url is not null)
    and exists (
      select from pg_catalog.pg_proc as p
      join pg_catalog.pg_namespace as n on n.oid = p.pronamespace
      where n.nspname = 'net' and p.proname = 'http_post')
    and to_regclass('net._http_response') is not null
$$;
comment on function tollgate.database_delivers_alerts() is
  'True when the database delivers alerts itself: pg_net is installed (net.http_post, net._http_response) and guard_settings.webhook_url is set. Otherwise the ai function delivers them. Called by the jobs and claim_alerts().';
revoke all on function tollgate.database_delivers_alerts() from public, anon, authenticated;
grant execute on function tollgate.database_delivers_alerts() to service_role;

-- ============================================================================
-- Job 1: tollgate.check_budgets(as_of) — thresholds and the throttle
-- ============================================================================
-- Month-to-date spend of each budget is the sum of its budget_settlements shards
-- for the month (the rollup settle() and the expiry job keep; never a scan of
-- ai_api_calls). percent = 100 x spend / monthly_limit_usd. For each threshold of
-- the budget's `thresholds` with percent >= threshold: one alert, exactly once per
-- budget and month (dedup_key). Projection = spend x month length / max(elapsed, 1 h),
-- as public.budget_status shows it.
--
-- The throttle follows the GLOBAL budget (feature budgets alert, and their hard
-- caps refuse their feature's calls, but never throttle the whole gateway):
--   percent >= guard_settings.throttle_percent -> throttled, reason naming the budget;
--   otherwise, if this job set it -> cleared (a new month starts at 0; a raised
--   limit or a lowered spend lowers the percent). Recomputed on every run.
-- Turning the throttle on is announced by the budget's threshold alert when one
-- at or above throttle_percent was raised in the same run, else by a `throttle`
-- alert (e.g. again later in a month whose 90% alert was already sent); turning it
-- off by a `throttle_cleared` alert.
--
-- as_of (default now()) is the instant to evaluate: tests pass a later one to see a
-- new month begin. Returns {alerts, throttled, throttle_changed}.
create function tollgate.check_budgets(as_of timestamptz default now())
returns jsonb
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_month date;
  v_month_start timestamptz;
  v_month_seconds numeric;
  v_elapsed_seconds numeric;
  v_throttle_percent integer;
  v_global record;
  v_budget record;
  v_threshold integer;
  v_percent numeric;
  v_projection numeric;
  v_name text;
  v_severity text;
  v_message text;
  v_should_throttle boolean;
  v_throttled boolean;
  v_throttled_by text;
  v_throttled_since timestamptz;
  v_throttle_on_now boolean := false;
  v_throttle_off_now boolean := false;
  v_announced boolean := false;
  v_inserted integer;
  v_alerts integer := 0;
begin
  if as_of is null then
    raise exception 'tollgate.check_budgets: as_of must not be null' using errcode = '22023';
  end if;
  -- One run at a time (a concurrent run waits, then sees this one's work).
  perform pg_advisory_xact_lock(hashtextextended('tollgate.check_budgets', 7104));

  v_month := date_trunc('month', as_of at time zone 'UTC')::date;
  v_month_start := v_month::timestamp at time zone 'UTC';
  v_month_seconds := extract(epoch from tollgate.next_month_start(as_of) - v_month_start);
  v_elapsed_seconds := greatest(extract(epoch from as_of - v_month_start), 3600);
  select s.throttle_percent into v_throttle_percent from tollgate.guard_settings as s where s.id;

  ---------------------------------------------------------------- the throttle (global budget)
  select b.id, b.monthly_limit_usd,
    coalesce((select sum(st.spent_usd) from tollgate.budget_settlements as st
      where st.budget_id = b.id and st.period_start = v_month), 0) as spend
  into v_global
  from tollgate.budgets as b
  where b.scope = 'global';
  v_should_throttle := v_throttle_percent is not null and v_global.id is not null
    and v_global.spend * 100 >= v_global.monthly_limit_usd * v_throttle_percent;

  -- Lock the flags' row: the read and the flip below are one decision.
  select g.throttled, g.throttled_by, g.throttled_since
  into v_throttled, v_throttled_by, v_throttled_since
  from tollgate.gateway_state as g
  where g.id
  for update;

  if v_should_throttle and not v_throttled then
    update tollgate.gateway_state as g
    set throttled = true,
        throttle_reason = format('the global budget is at %s%% of its %s USD monthly limit',
          floor(v_global.spend * 100 / v_global.monthly_limit_usd), tollgate.usd(v_global.monthly_limit_usd)),
        throttled_since = as_of,
        throttled_by = 'budget_guard',
        updated_at = now()
    where g.id;
    v_throttle_on_now := true;
    v_throttled_since := as_of;
  elsif not v_should_throttle and v_throttled and v_throttled_by = 'budget_guard' then
    update tollgate.gateway_state as g
    set throttled = false,
        throttle_reason = null,
        throttled_since = null,
        throttled_by = null,
        updated_at = now()
    where g.id;
    v_throttle_off_now := true;
  end if;

  ---------------------------------------------------------------- threshold alerts, every budget
  for v_budget in
    select b.id, b.scope, b.feature, b.monthly_limit_usd, b.hard_cap, b.exempt_critical,
      array(select distinct t from unnest(b.thresholds) as t order by t) as thresholds,
      coalesce((select sum(st.spent_usd) from tollgate.budget_settlements as st
        where st.budget_id = b.id and st.period_start = v_month), 0) as spend
    from tollgate.budgets as b
    order by b.id
  loop
    v_percent := v_budget.spend * 100 / v_budget.monthly_limit_usd;
    v_projection := round(v_budget.spend * v_month_seconds / v_elapsed_seconds, 6);
    v_name := case when v_budget.scope = 'global' then 'global' else 'feature ' || v_budget.feature end;
    foreach v_threshold in array v_budget.thresholds loop
      exit when v_percent < v_threshold;
      v_severity := case
        when v_threshold >= 100 then 'hard_cap'
        when v_threshold >= 90 then 'throttle'
        when v_threshold >= 75 then 'investigate'
        else 'info'
      end;
      v_message := format('Tollgate: the %s budget is at %s%% of its %s USD monthly limit (threshold %s%%): %s USD spent this month, %s USD projected by month end. ',
          v_name, floor(v_percent), tollgate.usd(v_budget.monthly_limit_usd), v_threshold,
          tollgate.usd(v_budget.spend), tollgate.usd(v_projection))
        || case
          when v_threshold >= 100 and v_budget.hard_cap then
            'HARD CAP: admission now refuses this budget''s requests (budget_exceeded)'
            || case when v_budget.exempt_critical then ', except critical features.' else ', critical features included.' end
          when v_threshold >= 100 then 'Over the limit; this budget has no hard cap, so calls continue.'
          when v_budget.scope = 'global' and v_throttle_percent is not null and v_threshold >= v_throttle_percent then
            'THROTTLE ON: background features are refused, normal features run in restricted mode (cheaper model, fewer tokens), critical features as usual.'
          when v_threshold >= 90 then 'Act now: the limit is close'
            || case when v_budget.hard_cap then ', and its hard cap refuses requests at 100%.' else '.' end
          when v_threshold >= 75 then 'Investigate: see public.cost_by_feature and public.cost_by_user.'
          else 'For information.'
        end;
      insert into tollgate.budget_alerts (
        dedup_key, kind, severity, budget_id, budget, period_start, threshold, spend_usd, limit_usd,
        projection_usd, message, details, created_at, next_attempt_at)
      values (
        format('budget:%s:%s:%s', v_budget.id, v_month, v_threshold), 'budget', v_severity, v_budget.id, v_name,
        v_month, v_threshold, v_budget.spend, v_budget.monthly_limit_usd, v_projection, v_message,
        jsonb_build_object('percent', round(v_percent, 2), 'hard_cap', v_budget.hard_cap,
          'exempt_critical', v_budget.exempt_critical),
        now(), now())
      on conflict (dedup_key) do nothing;
      get diagnostics v_inserted = row_count;
      v_alerts := v_alerts + v_inserted;
      if v_inserted > 0 and v_budget.scope = 'global' and v_throttle_percent is not null
        and v_threshold >= v_throttle_percent then
        v_announced := true;
      end if;
    end loop;
  end loop;

  ---------------------------------------------------------------- the throttle's own alerts
  if v_throttle_on_now and not v_announced then
    insert into tollgate.budget_alerts (
      dedup_key, kind, severity, budget_id, budget, period_start, spend_usd, limit_usd, projection_usd, message)
    values (
      format('throttle:%s', v_throttled_since), 'throttle', 'throttle', v_global.id, 'global', v_month, v_global.spend,
      v_global.monthly_limit_usd, round(v_global.spend * v_month_seconds / v_elapsed_seconds, 6),
      format('Tollgate: THROTTLE ON — the global budget is at %s%% of its %s USD monthly limit. Background features are refused, normal features run in restricted mode, critical features as usual.',
        floor(v_global.spend * 100 / v_global.monthly_limit_usd), tollgate.usd(v_global.monthly_limit_usd)))
    on conflict (dedup_key) do nothing;
    get diagnostics v_inserted = row_count;
    v_alerts := v_alerts + v_inserted;
  end if;
  if v_throttle_off_now then
    insert into tollgate.budget_alerts (
      dedup_key, kind, severity, budget_id, budget, period_start, spend_usd, limit_usd, message)
    values (
      format('throttle_cleared:%s', v_throttled_since), 'throttle_cleared', 'resolved', v_global.id, 'global', v_month,
      v_global.spend, v_global.monthly_limit_usd,
      format('Tollgate: throttle off — the global budget is at %s%% of its %s USD monthly limit (a new month, a raised limit or a correction). Every feature runs normally again.',
        floor(coalesce(v_global.spend * 100 / v_global.monthly_limit_usd, 0)), tollgate.usd(v_global.monthly_limit_usd)))
    on conflict (dedup_key) do nothing;
    get diagnostics v_inserted = row_count;
    v_alerts := v_alerts + v_inserted;
  end if;

  return jsonb_build_object(
    'alerts', v_alerts,
    'throttled', (v_throttled and not v_throttle_off_now) or v_throttle_on_now,
    'throttle_changed', v_throttle_on_now or v_throttle_off_now);
end;
$$;
comment on function tollgate.check_budgets(timestamptz) is
  'Job (every minute): month-to-date spend per budget from budget_settlements; one alert per threshold crossed, exactly once per budget and month; the throttle on at guard_settings.throttle_percent of the global budget, off when under it. Safe late, twice or concurrently. Called by pg_cron as postgres, or by service_role.';
revoke all on function tollgate.check_budgets(timestamptz) from public, anon, authenticated;
grant execute on function tollgate.check_budgets(timestamptz) to service_role;

-- ============================================================================
-- Job 2: tollgate.check_anomalies(as_of) — the spend breaker and user flags
-- ============================================================================
-- SPEND BREAKER. Let W = guard_settings.anomaly_window_minutes (10), H = the UTC
-- hour containing as_of.
--   rate      = sum(ai_api_calls.estimated_cost) with created_at in (as_of - W, as_of]
--               x 60 / W                                         (USD per hour)
--   baseline  = avg(spend_hourly.cost_usd) of the hours H - 1 day … H - 7 days
--               (the trailing week's rate for this hour of the day), when all
--               7 rows exist; otherwise ("history is short") avg over the 24 most
--               recent rows of the last 26 hours (the trailing day), when 24 exist;
--               otherwise none: the breaker is not armed (no normal to compare
--               with; budgets' hard caps and users' limits still hold).
--   trips     when rate > anomaly_factor (3) x max(baseline, anomaly_min_usd_per_hour)
--   clears    when it is not (the window slides: a burst leaves it after W minutes)
-- Tripping sets gateway_state.anomaly_paused (admission then refuses non-critical
-- features) unless an operator snoozed the breaker (clear_anomaly); it clears only
-- what it set.
--
-- USER FLAGS. For each user with calls in the hour before as_of:
--   rate      = calls in (as_of - 1 h, as_of] x 24                   (calls per day)
--   baseline  = sum(user_usage_daily.calls) of the 7 UTC days before as_of's day / 7
--   flagged   when rate > user_anomaly_factor (10) x max(baseline,
--             user_anomaly_min_calls_per_day (200)), unless snoozed;
--   cleared   when a flagged user's rate is no longer over it.
--
-- Cost: the recent window and the last hour are range scans of the (created_at,
-- provider) index of ai_api_calls; the baseline reads at most 31 rows of
-- spend_hourly and one user_usage_daily range per active user. spend_hourly is
-- filled here, a completed hour at a time (at most 48 per run).
-- Returns {rate_usd_per_hour, baseline_usd_per_hour, basis, anomaly_paused,
-- users_flagged, users_cleared, alerts}.
create function tollgate.check_anomalies(as_of timestamptz default now())
returns jsonb
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_settings tollgate.guard_settings;
  v_hour timestamptz := date_trunc('hour', as_of);
  v_from timestamptz;
  v_last timestamptz;
  v_window_spend numeric;
  v_rate numeric;
  v_baseline numeric;
  v_basis text;
  v_rows integer;
  v_limit numeric;
  v_over boolean;
  v_paused boolean;
  v_paused_by text;
  v_paused_since timestamptz;
  v_snoozed_until timestamptz;
  v_reason text;
  v_inserted integer;
  v_alerts integer := 0;
  v_flagged integer := 0;
  v_cleared integer := 0;
  v_user record;
begin
  if as_of is null then
    raise exception 'tollgate.check_anomalies: as_of must not be null' using errcode = '22023';
  end if;
  perform pg_advisory_xact_lock(hashtextextended('tollgate.check_anomalies', 7104));
  select s.* into v_settings from tollgate.guard_settings as s where s.id;

  ---------------------------------------------------------------- hourly history
  -- Completed hours whose calls are all settled (or expired) by now: those that
  -- began 75 minutes or more ago. From the last row on, or from the first call
  -- (at most 8 days back): quiet hours before the gateway's first call are not history.
  v_last := date_trunc('hour', as_of - interval '75 minutes');
  select max(h.hour) + interval '1 hour' into v_from from tollgate.spend_hourly as h;
  if v_from is null then
    -- greatest() ignores a null: without a call there is no first hour at all.
    select case when min(c.created_at) is not null
      then greatest(date_trunc('hour', min(c.created_at)), v_hour - interval '8 days') end
    into v_from
    from public.ai_api_calls as c
    where c.created_at > as_of - interval '8 days';
  end if;
  if v_from is not null and v_from <= v_last then
    insert into tollgate.spend_hourly (hour, calls, cost_usd, computed_at)
    select h.hour, count(c.id), coalesce(sum(c.estimated_cost), 0), now()
    from generate_series(v_from, least(v_last, v_from + interval '47 hours'), interval '1 hour') as h (hour)
    left join public.ai_api_calls as c
      on c.created_at >= h.hour and c.created_at < h.hour + interval '1 hour'
    group by h.hour
    order by h.hour
    on conflict (hour) do nothing;
  end if;
  delete from tollgate.spend_hourly as h where h.hour < as_of - interval '15 days';

  ---------------------------------------------------------------- the spend rate and its baseline
  select coalesce(sum(c.estimated_cost), 0) into v_window_spend
  from public.ai_api_calls as c
  where c.created_at > as_of - make_interval(mins => v_settings.anomaly_window_minutes)
    and c.created_at <= as_of;
  v_rate := v_window_spend * 60 / v_settings.anomaly_window_minutes;

  select count(*), avg(h.cost_usd) into v_rows, v_baseline
  from tollgate.spend_hourly as h
  where h.hour in (select v_hour - make_interval(days => d) from generate_series(1, 7) as d);
  v_basis := 'trailing week, same hour';
  if v_rows < 7 then
    select count(*), avg(r.cost_usd) into v_rows, v_baseline
    from (
      select h.cost_usd from tollgate.spend_hourly as h
      where h.hour >= v_hour - interval '26 hours' and h.hour < v_hour
      order by h.hour desc
      limit 24
    ) as r;
    v_basis := 'trailing day';
    if v_rows < 24 then
      v_baseline := null;
      v_basis := 'none (less than a day of history)';
    end if;
  end if;
  v_limit := v_settings.anomaly_factor * greatest(v_baseline, v_settings.anomaly_min_usd_per_hour);
  v_over := v_baseline is not null and v_rate > v_limit;

  ---------------------------------------------------------------- the breaker
  select g.anomaly_paused, g.anomaly_paused_by, g.anomaly_paused_since, g.anomaly_snoozed_until
  into v_paused, v_paused_by, v_paused_since, v_snoozed_until
  from tollgate.gateway_state as g
  where g.id
  for update;

  if v_over and not v_paused and (v_snoozed_until is null or v_snoozed_until <= as_of) then
    v_reason := format('spend of the last %s minutes runs at %s USD/h, more than %sx the normal %s USD/h',
      v_settings.anomaly_window_minutes, tollgate.usd(v_rate), trim_scale(v_settings.anomaly_factor),
      tollgate.usd(greatest(v_baseline, v_settings.anomaly_min_usd_per_hour)));
    update tollgate.gateway_state as g
    set anomaly_paused = true,
        anomaly_reason = v_reason,
        anomaly_paused_since = as_of,
        anomaly_paused_by = 'budget_guard',
        updated_at = now()
    where g.id;
    insert into tollgate.budget_alerts (dedup_key, kind, severity, period_start, spend_usd, message, details)
    values (
      format('anomaly:%s', as_of), 'anomaly', 'anomaly', date_trunc('month', as_of at time zone 'UTC')::date,
      v_window_spend,
      format('Tollgate: ANOMALY — %s (basis: %s). Non-critical features are paused; critical features still run. It clears itself when the rate is normal again; to resume now: select tollgate.clear_anomaly();',
        v_reason, v_basis),
      jsonb_build_object('rate_usd_per_hour', round(v_rate, 6), 'baseline_usd_per_hour', round(v_baseline, 6),
        'basis', v_basis, 'trip_above_usd_per_hour', round(v_limit, 6)))
    on conflict (dedup_key) do nothing;
    get diagnostics v_inserted = row_count;
    v_alerts := v_alerts + v_inserted;
    v_paused := true;
  elsif not v_over and v_paused and v_paused_by = 'budget_guard' then
    update tollgate.gateway_state as g
    set anomaly_paused = false,
        anomaly_reason = null,
        anomaly_paused_since = null,
        anomaly_paused_by = null,
        updated_at = now()
    where g.id;
    insert into tollgate.budget_alerts (dedup_key, kind, severity, period_start, spend_usd, message, details)
    values (
      format('anomaly_cleared:%s', v_paused_since), 'anomaly_cleared', 'resolved',
      date_trunc('month', as_of at time zone 'UTC')::date, v_window_spend,
      format('Tollgate: the spend rate is back to normal (%s USD/h over the last %s minutes); every feature runs again.',
        tollgate.usd(v_rate), v_settings.anomaly_window_minutes),
      jsonb_build_object('rate_usd_per_hour', round(v_rate, 6), 'baseline_usd_per_hour', round(v_baseline, 6),
        'basis', v_basis))
    on conflict (dedup_key) do nothing;
    get diagnostics v_inserted = row_count;
    v_alerts := v_alerts + v_inserted;
    v_paused := false;
  end if;

  ---------------------------------------------------------------- users far above their own baseline
  for v_user in
    with recent as (
      select c.user_id, count(*) as calls
      from public.ai_api_calls as c
      where c.created_at > as_of - interval '1 hour' and c.created_at <= as_of and c.user_id is not null
      group by c.user_id
    ),
    rated as (
      select r.user_id, r.calls, r.calls * 24 as per_day,
        coalesce((
          select sum(d.calls) / 7.0 from public.user_usage_daily as d
          where d.user_id = r.user_id
            and d.day >= (as_of at time zone 'UTC')::date - 7 and d.day < (as_of at time zone 'UTC')::date), 0)
          as baseline
      from recent as r
    ),
    excessive as (
      select rt.* from rated as rt
      where rt.per_day > v_settings.user_anomaly_factor
        * greatest(rt.baseline, v_settings.user_anomaly_min_calls_per_day::numeric)
    ),
    flagged as (
      insert into tollgate.user_flags as f (
        user_id, flagged, flagged_since, reason, calls_last_hour, baseline_calls_per_day, updated_at)
      select o.user_id, true, as_of,
        format('%s calls in the last hour (%s per day) against a baseline of %s per day', o.calls, o.per_day,
          round(o.baseline, 1)),
        o.calls, round(o.baseline, 2), now()
      from excessive as o
      order by o.user_id
      on conflict (user_id) do update
        set flagged = true,
            flagged_since = excluded.flagged_since,
            reason = excluded.reason,
            calls_last_hour = excluded.calls_last_hour,
            baseline_calls_per_day = excluded.baseline_calls_per_day,
            updated_at = excluded.updated_at
        where not f.flagged and (f.snoozed_until is null or f.snoozed_until <= as_of)
      returning f.user_id, f.flagged_since, f.reason, f.calls_last_hour, f.baseline_calls_per_day
    )
    select 'flagged' as change, fl.user_id, fl.flagged_since as since, fl.reason, fl.calls_last_hour,
      fl.baseline_calls_per_day
    from flagged as fl
  loop
    v_flagged := v_flagged + 1;
    insert into tollgate.budget_alerts (dedup_key, kind, severity, user_id, period_start, message, details)
    values (
      format('user_anomaly:%s:%s', v_user.user_id, v_user.since), 'user_anomaly', 'anomaly', v_user.user_id,
      date_trunc('month', as_of at time zone 'UTC')::date,
      format('Tollgate: user %s is far above their usual volume: %s. Flagged in tollgate.user_flags (not blocked: their tier''s limits still apply). To clear: select tollgate.clear_user_flag(''%s'');',
        v_user.user_id, v_user.reason, v_user.user_id),
      jsonb_build_object('calls_last_hour', v_user.calls_last_hour, 'baseline_calls_per_day',
        v_user.baseline_calls_per_day))
    on conflict (dedup_key) do nothing;
    get diagnostics v_inserted = row_count;
    v_alerts := v_alerts + v_inserted;
  end loop;

  -- Flagged users whose last hour is normal again.
  for v_user in
    with normal as (
      select f.user_id, f.flagged_since
      from tollgate.user_flags as f
      where f.flagged
        and (
          select count(*) from public.ai_api_calls as c
          where c.user_id = f.user_id and c.created_at > as_of - interval '1 hour' and c.created_at <= as_of
        ) * 24 <= v_settings.user_anomaly_factor * greatest(
          coalesce((
            select sum(d.calls) / 7.0 from public.user_usage_daily as d
            where d.user_id = f.user_id
              and d.day >= (as_of at time zone 'UTC')::date - 7 and d.day < (as_of at time zone 'UTC')::date), 0),
          v_settings.user_anomaly_min_calls_per_day::numeric)
    )
    update tollgate.user_flags as f
    set flagged = false, cleared_at = as_of, updated_at = now()
    from normal as n
    where f.user_id = n.user_id
    returning f.user_id, n.flagged_since as since
  loop
    v_cleared := v_cleared + 1;
    insert into tollgate.budget_alerts (dedup_key, kind, severity, user_id, period_start, message)
    values (
      format('user_anomaly_cleared:%s:%s', v_user.user_id, v_user.since), 'user_anomaly_cleared', 'resolved',
      v_user.user_id, date_trunc('month', as_of at time zone 'UTC')::date,
      format('Tollgate: user %s is back to their usual volume; the flag is cleared.', v_user.user_id))
    on conflict (dedup_key) do nothing;
    get diagnostics v_inserted = row_count;
    v_alerts := v_alerts + v_inserted;
  end loop;

  return jsonb_build_object(
    'rate_usd_per_hour', round(v_rate, 6),
    'baseline_usd_per_hour', round(v_baseline, 6),
    'basis', v_basis,
    'anomaly_paused', v_paused,
    'users_flagged', v_flagged,
    'users_cleared', v_cleared,
    'alerts', v_alerts);
end;
$$;
comment on function tollgate.check_anomalies(timestamptz) is
  'Job (every minute): the spend breaker (rate of the last 10 minutes over 3x its baseline pauses non-critical features; clears when normal) and per-user flags (request rate far above the user''s own baseline), with alerts. Formulas in the migration. Safe late, twice or concurrently. Called by pg_cron as postgres, or by service_role.';
revoke all on function tollgate.check_anomalies(timestamptz) from public, anon, authenticated;
grant execute on function tollgate.check_anomalies(timestamptz) to service_role;

-- ----------------------------------------------------------------------------
-- Operators: clear a breaker or a user flag by hand
-- ----------------------------------------------------------------------------
-- `select tollgate.clear_anomaly();` resumes every feature now and keeps the breaker
-- from tripping again for `snooze` (default an hour: time to look at the spend).
create function tollgate.clear_anomaly(snooze interval default interval '1 hour')
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_was_paused boolean;
  v_since timestamptz;
begin
  if snooze is null or snooze < interval '0' then
    raise exception 'tollgate.clear_anomaly: snooze must be an interval >= 0' using errcode = '22023';
  end if;
  perform pg_advisory_xact_lock(hashtextextended('tollgate.check_anomalies', 7104));
  select g.anomaly_paused, g.anomaly_paused_since into v_was_paused, v_since
  from tollgate.gateway_state as g where g.id for update;
  update tollgate.gateway_state as g
  set anomaly_paused = false,
      anomaly_reason = null,
      anomaly_paused_since = null,
      anomaly_paused_by = null,
      anomaly_snoozed_until = now() + snooze,
      updated_at = now()
  where g.id;
  if v_was_paused then
    insert into tollgate.budget_alerts (dedup_key, kind, severity, period_start, message, details)
    values (
      format('anomaly_cleared:%s', coalesce(v_since, now())), 'anomaly_cleared', 'resolved',
      date_trunc('month', now() at time zone 'UTC')::date,
      format('Tollgate: the anomaly pause was cleared by an operator; every feature runs again (the breaker is snoozed until %s).',
        to_char(now() + snooze, 'YYYY-MM-DD HH24:MI "UTC"')),
      jsonb_build_object('by', 'operator', 'snoozed_until', now() + snooze))
    on conflict (dedup_key) do nothing;
  end if;
  return coalesce(v_was_paused, false);
end;
$$;
comment on function tollgate.clear_anomaly(interval) is
  'Operator: turns the anomaly pause off and snoozes the spend breaker for `snooze` (default 1 hour). Returns whether it was on. Run in the SQL editor as postgres, or by service_role.';
revoke all on function tollgate.clear_anomaly(interval) from public, anon, authenticated;
grant execute on function tollgate.clear_anomaly(interval) to service_role;

-- `select tollgate.clear_user_flag('<user id>');` clears a user's flag and does not
-- flag them again for `snooze` (default a day).
create function tollgate.clear_user_flag(user_id uuid, snooze interval default interval '1 day')
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_was_flagged boolean;
  v_since timestamptz;
begin
  if user_id is null or snooze is null or snooze < interval '0' then
    raise exception 'tollgate.clear_user_flag: user_id is required and snooze must be an interval >= 0'
      using errcode = '22023';
  end if;
  perform pg_advisory_xact_lock(hashtextextended('tollgate.check_anomalies', 7104));
  select f.flagged, f.flagged_since into v_was_flagged, v_since
  from tollgate.user_flags as f
  where f.user_id = clear_user_flag.user_id
  for update;
  -- A user without a row gets one: an operator may snooze a user in advance.
  insert into tollgate.user_flags as f (user_id, flagged, snoozed_until, updated_at)
  values (clear_user_flag.user_id, false, now() + snooze, now())
  on conflict on constraint user_flags_pkey do update
    set flagged = false,
        cleared_at = case when f.flagged then now() else f.cleared_at end,
        snoozed_until = excluded.snoozed_until,
        updated_at = excluded.updated_at;
  if coalesce(v_was_flagged, false) then
    insert into tollgate.budget_alerts (dedup_key, kind, severity, user_id, period_start, message, details)
    values (
      format('user_anomaly_cleared:%s:%s', clear_user_flag.user_id, v_since), 'user_anomaly_cleared', 'resolved',
      clear_user_flag.user_id, date_trunc('month', now() at time zone 'UTC')::date,
      format('Tollgate: the flag of user %s was cleared by an operator.', clear_user_flag.user_id),
      jsonb_build_object('by', 'operator', 'snoozed_until', now() + snooze))
    on conflict (dedup_key) do nothing;
  end if;
  return coalesce(v_was_flagged, false);
end;
$$;
comment on function tollgate.clear_user_flag(uuid, interval) is
  'Operator: clears a user''s anomaly flag and does not flag them again for `snooze` (default 1 day). Returns whether they were flagged. Run as postgres or service_role.';
revoke all on function tollgate.clear_user_flag(uuid, interval) from public, anon, authenticated;
grant execute on function tollgate.clear_user_flag(uuid, interval) to service_role;

-- ============================================================================
-- Delivery by the ai function: claim, post, record
-- ============================================================================
-- The function (TOLLGATE_ALERT_WEBHOOK_URL set) calls claim_alerts() after a
-- request, at most every 30 s per isolate, inside EdgeRuntime.waitUntil; POSTs each
-- payload; then record_alert_delivery(id, error) for each. Claims take a lease with
-- FOR UPDATE SKIP LOCKED: concurrent isolates split the due alerts, and an alert
-- whose deliverer vanished is claimed again when its lease ends. When the database
-- delivers by itself (database_delivers_alerts()), claim_alerts returns nothing.
create function tollgate.claim_alerts(max_alerts integer default 10, lease_seconds integer default 60)
returns table (alert_id bigint, payload jsonb)
language plpgsql
volatile
security definer
set search_path = ''
as $$
begin
  if max_alerts is null or max_alerts not between 1 and 100 then
    raise exception 'tollgate.claim_alerts: max_alerts must be from 1 to 100' using errcode = '22023';
  end if;
  if lease_seconds is null or lease_seconds not between 5 and 3600 then
    raise exception 'tollgate.claim_alerts: lease_seconds must be from 5 to 3600' using errcode = '22023';
  end if;
  if tollgate.database_delivers_alerts() then
    return;
  end if;
  return query
  with due as (
    select a.id
    from tollgate.budget_alerts as a
    where a.delivered_at is null
      and a.next_attempt_at <= now()
      and (a.lease_until is null or a.lease_until <= now())
      and a.net_request_id is null
    order by a.next_attempt_at, a.id
    limit max_alerts
    for update skip locked
  )
  update tollgate.budget_alerts as a
  set attempts = a.attempts + 1,
      lease_until = now() + make_interval(secs => lease_seconds)
  from due
  where a.id = due.id
  returning a.id, tollgate.alert_payload(a);
end;
$$;
comment on function tollgate.claim_alerts(integer, integer) is
  'For the ai function: leases up to max_alerts due, undelivered alerts for lease_seconds (SKIP LOCKED: isolates never get the same one at once) and returns their webhook payloads. Empty when the database delivers alerts itself (pg_net). Called as postgres or service_role.';
revoke all on function tollgate.claim_alerts(integer, integer) from public, anon, authenticated;
grant execute on function tollgate.claim_alerts(integer, integer) to service_role;

create function tollgate.record_alert_delivery(alert_id bigint, error_message text default null)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
begin
  if error_message is null then
    update tollgate.budget_alerts as a
    set delivered_at = now(),
        delivered_via = 'function',
        lease_until = null,
        last_error = null
    where a.id = record_alert_delivery.alert_id and a.delivered_at is null;
  else
    update tollgate.budget_alerts as a
    set last_error = left(error_message, 1000),
        lease_until = null,
        next_attempt_at = now() + tollgate.alert_retry_delay(a.attempts)
    where a.id = record_alert_delivery.alert_id and a.delivered_at is null;
  end if;
  return found;
end;
$$;
comment on function tollgate.record_alert_delivery(bigint, text) is
  'For the ai function: the outcome of posting a claimed alert. error null: delivered (delivered_at set). Otherwise the error is kept and the alert retried after a backoff (1, 2, 4 … minutes, at most an hour) — never dropped. Returns false when it was already delivered. Called as postgres or service_role.';
revoke all on function tollgate.record_alert_delivery(bigint, text) from public, anon, authenticated;
grant execute on function tollgate.record_alert_delivery(bigint, text) to service_role;

-- ============================================================================
-- Job 3: tollgate.deliver_alerts() — delivery by the database (pg_net)
-- ============================================================================
-- pg_net sends after the transaction commits and records the answer in
-- net._http_response (kept a few hours). Each run therefore (1) reads the answers
-- to the requests of earlier runs: 2xx -> delivered; any other status, a timeout
-- or an error -> retry after the backoff; no answer within 5 minutes -> retry;
-- (2) sends the alerts that are due. pg_net is called through dynamic SQL so that
-- this function exists, and lints, where pg_net does not: without it (or without
-- guard_settings.webhook_url) the run only prunes and the ai function delivers.
-- Also prunes delivered alerts older than 180 days.
create function tollgate.deliver_alerts(max_alerts integer default 50)
returns jsonb
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_url text;
  v_net text;
  v_alert record;
  v_row tollgate.budget_alerts;
  v_answered boolean;
  v_status integer;
  v_timed_out boolean;
  v_error text;
  v_request_id bigint;
  v_delivered integer := 0;
  v_failed integer := 0;
  v_sent integer := 0;
  v_pruned integer;
begin
  if max_alerts is null or max_alerts not between 1 and 1000 then
    raise exception 'tollgate.deliver_alerts: max_alerts must be from 1 to 1000' using errcode = '22023';
  end if;
  delete from tollgate.budget_alerts as a
  where a.delivered_at is not null and a.created_at < now() - interval '180 days';
  get diagnostics v_pruned = row_count;

  if not tollgate.database_delivers_alerts() then
    return jsonb_build_object('via', 'function', 'delivered', 0, 'failed', 0, 'sent', 0, 'pruned', v_pruned);
  end if;
  select s.webhook_url into v_url from tollgate.guard_settings as s where s.id;
  -- pg_net's schema, looked up at run time: the statements below name it through
  -- format(), so that they are only planned where it exists.
  select n.nspname into v_net from pg_catalog.pg_namespace as n where n.nspname = 'net';

  -- (1) Answers to earlier requests.
  for v_alert in
    select a.id, a.net_request_id, a.lease_until, a.attempts
    from tollgate.budget_alerts as a
    where a.delivered_at is null and a.net_request_id is not null
    order by a.id
    for update skip locked
  loop
    v_answered := false;
    v_status := null;
    v_timed_out := null;
    v_error := null;
    execute format('select true, r.status_code, r.timed_out, r.error_msg from %I._http_response as r where r.id = $1',
        v_net)
      into v_answered, v_status, v_timed_out, v_error
      using v_alert.net_request_id;
    v_answered := coalesce(v_answered, false);
    if v_answered and v_status between 200 and 299 then
      update tollgate.budget_alerts as a
      set delivered_at = now(), delivered_via = 'pg_net', lease_until = null, net_request_id = null, last_error = null
      where a.id = v_alert.id;
      v_delivered := v_delivered + 1;
    elsif v_answered or v_alert.lease_until <= now() then
      update tollgate.budget_alerts as a
      set last_error = left(case
            when not v_answered then 'no answer from pg_net within the lease'
            when coalesce(v_timed_out, false) then 'timed out'
            when v_status is not null then format('HTTP %s', v_status)
            else coalesce(v_error, 'request failed')
          end, 1000),
          lease_until = null,
          net_request_id = null,
          next_attempt_at = now() + tollgate.alert_retry_delay(v_alert.attempts)
      where a.id = v_alert.id;
      v_failed := v_failed + 1;
    end if;
  end loop;

  -- (2) Send what is due.
  for v_row in
    select a.*
    from tollgate.budget_alerts as a
    where a.delivered_at is null
      and a.net_request_id is null
      and a.next_attempt_at <= now()
      and (a.lease_until is null or a.lease_until <= now())
    order by a.next_attempt_at, a.id
    limit max_alerts
    for update skip locked
  loop
    execute format('select %I.http_post(url := $1, body := $2, headers := $3, timeout_milliseconds := 10000)', v_net)
      into v_request_id
      using v_url, tollgate.alert_payload(v_row), '{"Content-Type": "application/json"}'::jsonb;
    update tollgate.budget_alerts as a
    set net_request_id = v_request_id,
        attempts = a.attempts + 1,
        lease_until = now() + interval '5 minutes'
    where a.id = v_row.id;
    v_sent := v_sent + 1;
  end loop;

  return jsonb_build_object('via', 'pg_net', 'delivered', v_delivered, 'failed', v_failed, 'sent', v_sent,
    'pruned', v_pruned);
end;
$$;
comment on function tollgate.deliver_alerts(integer) is
  'Job (every minute): with pg_net and guard_settings.webhook_url, records the webhook''s answers to earlier posts (2xx: delivered; else retried with backoff) and posts the due alerts; without them, leaves delivery to the ai function. Prunes delivered alerts after 180 days. Called by pg_cron as postgres, or by service_role.';
revoke all on function tollgate.deliver_alerts(integer) from public, anon, authenticated;
grant execute on function tollgate.deliver_alerts(integer) to service_role;

-- ============================================================================
-- public.budget_alerts: the alerts in Studio
-- ============================================================================
create view public.budget_alerts
with (security_invoker = true)
as
select
  a.id,
  a.created_at,
  a.kind,
  a.severity,
  a.budget,
  a.period_start as period,
  a.threshold,
  a.spend_usd,
  a.limit_usd,
  a.projection_usd,
  a.user_id,
  a.message,
  case
    when a.delivered_at is not null then 'delivered'
    when a.lease_until > now() then 'sending'
    when a.attempts = 0 then 'pending'
    else 'retrying'
  end as delivery,
  a.attempts,
  a.last_error,
  a.next_attempt_at,
  a.delivered_at,
  a.delivered_via
from tollgate.budget_alerts as a
order by a.id desc;
comment on view public.budget_alerts is
  'The budget guard''s alerts, newest first: thresholds crossed, throttle and anomaly breaker changes, flagged users, and their webhook delivery. Studio only.';
comment on column public.budget_alerts.id is 'Alert id (alert_id in the webhook payload).';
comment on column public.budget_alerts.created_at is 'When the alert was raised.';
comment on column public.budget_alerts.kind is 'budget, throttle, throttle_cleared, anomaly, anomaly_cleared, user_anomaly, user_anomaly_cleared; provider_rate_limited, provider_key_dead, provider_key_budget, provider_key_expiring (the upstream migration).';
comment on column public.budget_alerts.severity is 'info, investigate, throttle, hard_cap, anomaly, resolved.';
comment on column public.budget_alerts.budget is '`global` or `feature <name>`.';
comment on column public.budget_alerts.period is 'First day of the UTC month.';
comment on column public.budget_alerts.threshold is 'Threshold crossed, % of the limit.';
comment on column public.budget_alerts.spend_usd is 'Month-to-date spend then, USD (anomaly: spend of the window).';
comment on column public.budget_alerts.limit_usd is 'Monthly limit then, USD.';
comment on column public.budget_alerts.projection_usd is 'Projected spend by month end, USD.';
comment on column public.budget_alerts.user_id is 'The flagged user.';
comment on column public.budget_alerts.message is 'What happened and what it does.';
comment on column public.budget_alerts.delivery is 'delivered, sending, pending (never tried) or retrying (a try failed).';
comment on column public.budget_alerts.attempts is 'Delivery attempts started.';
comment on column public.budget_alerts.last_error is 'Why the last attempt failed.';
comment on column public.budget_alerts.next_attempt_at is 'Next attempt, when not delivered.';
comment on column public.budget_alerts.delivered_at is 'When a webhook acknowledged it.';
comment on column public.budget_alerts.delivered_via is 'pg_net or function.';

revoke all on public.budget_alerts from public, anon, authenticated, service_role;
grant select on public.budget_alerts to service_role;

-- ----------------------------------------------------------------------------
-- Schedules (five-field: Debian's pg_cron 1.4 has no seconds). cron.schedule with a
-- job name updates the job of that name, so re-running this is harmless.
-- ----------------------------------------------------------------------------
select cron.schedule('tollgate-check-budgets', '* * * * *', 'select tollgate.check_budgets()');
select cron.schedule('tollgate-check-anomalies', '* * * * *', 'select tollgate.check_anomalies()');
select cron.schedule('tollgate-deliver-alerts', '* * * * *', 'select tollgate.deliver_alerts()');
