-- ============================================================================
-- Tollgate 6/6: views for Supabase Studio, and a user's own usage
--
-- Every view is `security_invoker`: it reads with the privileges and RLS of whoever
-- queries it (Studio's postgres role sees everything; clients see what RLS lets
-- them). The cost views read the rollups, never a scan of ai_api_calls, so they
-- answer in milliseconds at tens of millions of calls.
--
--   daily_cost_summary    Studio only  the seed's view, same columns, same values
--   cost_by_feature       Studio only  month × feature
--   cost_by_user          Studio only  month × user, top spenders first
--   budget_status         Studio only  month-to-date per budget, with a projection
--   rejections_by_layer   Studio only  refused requests per day, layer and code
--   my_usage              signed-in users: their own daily usage (RLS)
--
-- Days and months are UTC. Keep these definitions here: editing a view in Studio can
-- drop `security_invoker`.
-- ============================================================================

-- ----------------------------------------------------------------------------
-- daily_cost_summary: exactly the seed's columns, from the daily rollup
-- ----------------------------------------------------------------------------
-- Equal, row for row, to the seed's definition over ai_api_calls evaluated with
-- TimeZone = UTC (a pgTAP test proves it), with one documented choice: `errors`
-- counts status 'error' AND 'timeout' (both are provider failures); 'client_closed'
-- (the client left) and 'expired' (never settled, charged at the estimate) are not
-- errors here — usage_daily and cost_by_feature count them separately.
create view public.daily_cost_summary
with (security_invoker = true)
as
select
  (u.day::timestamp at time zone 'UTC') as day,
  u.provider,
  u.model,
  sum(u.calls)::bigint as total_calls,
  sum(u.input_tokens)::bigint as total_input_tokens,
  sum(u.output_tokens)::bigint as total_output_tokens,
  sum(u.cost_usd) as total_cost,
  (sum(u.latency_ms_sum) / nullif(sum(u.calls), 0))::integer as avg_latency_ms,
  sum(u.cache_hits)::bigint as cache_hits,
  sum(u.error_calls + u.timeout_calls)::bigint as errors
from tollgate.usage_daily as u
group by u.day, u.provider, u.model
having sum(u.calls) > 0
order by 1 desc;
comment on view public.daily_cost_summary is
  'Seed 000''s daily cost summary (same columns and values), read from the tollgate.usage_daily rollup. day is the UTC day. errors = status error or timeout. Studio only.';
comment on column public.daily_cost_summary.day is 'Start of the UTC day (timestamptz, like the seed''s date_trunc).';
comment on column public.daily_cost_summary.provider is 'Provider.';
comment on column public.daily_cost_summary.model is 'Model.';
comment on column public.daily_cost_summary.total_calls is 'Calls (every status, expired included).';
comment on column public.daily_cost_summary.total_input_tokens is 'Input tokens.';
comment on column public.daily_cost_summary.total_output_tokens is 'Output tokens.';
comment on column public.daily_cost_summary.total_cost is 'Cost, USD.';
comment on column public.daily_cost_summary.avg_latency_ms is 'Average latency, ms (rounded like the seed''s avg()::integer).';
comment on column public.daily_cost_summary.cache_hits is 'Calls served from the response cache.';
comment on column public.daily_cost_summary.errors is 'Calls with status error or timeout.';

-- ----------------------------------------------------------------------------
-- cost_by_feature: month × feature
-- ----------------------------------------------------------------------------
create view public.cost_by_feature
with (security_invoker = true)
as
select
  date_trunc('month', u.day::timestamp)::date as month,
  u.feature,
  sum(u.calls)::bigint as total_calls,
  sum(u.input_tokens)::bigint as total_input_tokens,
  sum(u.output_tokens)::bigint as total_output_tokens,
  sum(u.cost_usd) as total_cost,
  round(sum(u.cost_usd) / nullif(sum(u.calls), 0), 6) as avg_cost_per_call,
  round(100 * sum(u.cost_usd)
    / nullif(sum(sum(u.cost_usd)) over (partition by date_trunc('month', u.day::timestamp)::date), 0), 2)
    as percent_of_month,
  sum(u.cache_hits)::bigint as cache_hits,
  sum(u.saved_cost_usd) as saved_cost,
  sum(u.error_calls + u.timeout_calls)::bigint as errors,
  sum(u.client_closed_calls)::bigint as client_closed,
  sum(u.expired_calls)::bigint as expired,
  sum(u.fallback_calls)::bigint as fallbacks,
  sum(u.unpriced_calls)::bigint as unpriced
from tollgate.usage_daily as u
group by date_trunc('month', u.day::timestamp)::date, u.feature
having sum(u.calls) > 0
order by 1 desc, total_cost desc;
comment on view public.cost_by_feature is
  'Spend per UTC month and feature (seed 000: track cost per feature), from the rollup. Studio only.';
comment on column public.cost_by_feature.month is 'First day of the UTC month.';
comment on column public.cost_by_feature.feature is 'Feature.';
comment on column public.cost_by_feature.total_calls is 'Calls.';
comment on column public.cost_by_feature.total_input_tokens is 'Input tokens.';
comment on column public.cost_by_feature.total_output_tokens is 'Output tokens.';
comment on column public.cost_by_feature.total_cost is 'Cost, USD.';
comment on column public.cost_by_feature.avg_cost_per_call is 'Cost per call, USD.';
comment on column public.cost_by_feature.percent_of_month is 'Share of the month''s total cost, %.';
comment on column public.cost_by_feature.cache_hits is 'Cache hits.';
comment on column public.cost_by_feature.saved_cost is 'USD saved by cache hits.';
comment on column public.cost_by_feature.errors is 'Calls that ended in error or timeout.';
comment on column public.cost_by_feature.client_closed is 'Calls the client abandoned.';
comment on column public.cost_by_feature.expired is 'Reservations never settled (charged at their estimate).';
comment on column public.cost_by_feature.fallbacks is 'Calls answered by a fallback provider/model.';
comment on column public.cost_by_feature.unpriced is 'Calls whose model had no known price (cost unknown).';

-- ----------------------------------------------------------------------------
-- cost_by_user: month × user, top spenders first
-- ----------------------------------------------------------------------------
-- The window is partitioned by exactly the `month` column, so a filter on month
-- (`where month = '2026-11-01'`) is applied before the ranking and can use the
-- month index on user_usage_daily: read one month, not every user's whole history.
create view public.cost_by_user
with (security_invoker = true)
as
select
  date_trunc('month', d.day::timestamp)::date as month,
  rank() over (partition by date_trunc('month', d.day::timestamp)::date order by sum(d.cost_usd) desc) as rank,
  d.user_id,
  min(au.email)::text as email,
  sum(d.calls)::bigint as total_calls,
  sum(d.input_tokens + d.output_tokens)::bigint as total_tokens,
  sum(d.cost_usd) as total_cost,
  sum(d.cache_hits)::bigint as cache_hits,
  sum(d.errors)::bigint as errors,
  sum(d.reserved_cost_usd) as reserved_cost
from public.user_usage_daily as d
left join auth.users as au on au.id = d.user_id
group by date_trunc('month', d.day::timestamp)::date, d.user_id
order by 1 desc, total_cost desc;
comment on view public.cost_by_user is
  'Spend per UTC month and user, ranked (top spenders first), from the per-user rollup. Studio only.';
comment on column public.cost_by_user.month is 'First day of the UTC month.';
comment on column public.cost_by_user.rank is 'Rank by cost within the month (1 = top spender).';
comment on column public.cost_by_user.user_id is 'The user.';
comment on column public.cost_by_user.email is 'The user''s email (auth.users).';
comment on column public.cost_by_user.total_calls is 'Calls.';
comment on column public.cost_by_user.total_tokens is 'Input + output tokens.';
comment on column public.cost_by_user.total_cost is 'Cost, USD.';
comment on column public.cost_by_user.cache_hits is 'Cache hits.';
comment on column public.cost_by_user.errors is 'Calls that ended in error or timeout.';
comment on column public.cost_by_user.reserved_cost is 'Estimates of requests in flight, USD.';

-- ----------------------------------------------------------------------------
-- budget_status: the current month of every budget, with a projection
-- ----------------------------------------------------------------------------
-- The projection extrapolates the month-to-date spend linearly to the end of the
-- month (at least one hour of the month counts as elapsed, so the first minutes of
-- a month do not project absurd numbers).
create view public.budget_status
with (security_invoker = true)
as
with period as (
  select
    date_trunc('month', now() at time zone 'UTC')::date as month,
    extract(epoch from now() - (date_trunc('month', now() at time zone 'UTC') at time zone 'UTC')) as elapsed_seconds,
    extract(epoch from tollgate.next_month_start(now())
      - (date_trunc('month', now() at time zone 'UTC') at time zone 'UTC')) as month_seconds
)
select
  b.id as budget_id,
  b.scope,
  b.feature,
  period.month,
  b.monthly_limit_usd,
  m.spent_usd,
  m.reserved_usd,
  greatest(b.monthly_limit_usd - m.spent_usd - m.reserved_usd, 0) as remaining_usd,
  round(100 * m.spent_usd / b.monthly_limit_usd, 2) as percent_used,
  round(100 * (m.spent_usd + m.reserved_usd) / b.monthly_limit_usd, 2) as percent_committed,
  round(m.spent_usd * period.month_seconds / greatest(period.elapsed_seconds, 3600), 6) as projected_spend_usd,
  round(100 * m.spent_usd * period.month_seconds / greatest(period.elapsed_seconds, 3600)
    / b.monthly_limit_usd, 2) as projected_percent,
  m.calls,
  b.hard_cap,
  b.exempt_critical,
  b.thresholds
from tollgate.budgets as b
cross join period
cross join lateral (
  select
    coalesce(sum(st.spent_usd), 0) as spent_usd,
    coalesce((
      select sum(p.reserved_total_usd)
      from tollgate.budget_periods as p
      where p.budget_id = b.id and p.period_start = period.month), 0)
      - coalesce(sum(st.released_usd), 0) as reserved_usd,
    coalesce(sum(st.calls), 0)::bigint as calls
  from tollgate.budget_settlements as st
  where st.budget_id = b.id and st.period_start = period.month
) as m
order by b.scope desc, b.feature;
comment on view public.budget_status is
  'Month-to-date status of every budget (UTC month): spend, reservations in flight, percent used, and a linear projection to month end. Studio only; the budget guard jobs read it too.';
comment on column public.budget_status.budget_id is 'tollgate.budgets id.';
comment on column public.budget_status.scope is 'global or feature.';
comment on column public.budget_status.feature is 'The feature of a feature budget.';
comment on column public.budget_status.month is 'First day of the current UTC month.';
comment on column public.budget_status.monthly_limit_usd is 'The limit, USD.';
comment on column public.budget_status.spent_usd is 'Settled spend this month, USD.';
comment on column public.budget_status.reserved_usd is 'Estimates of requests in flight, USD.';
comment on column public.budget_status.remaining_usd is 'Limit minus spend and reservations, USD (not below 0).';
comment on column public.budget_status.percent_used is 'Spend as % of the limit.';
comment on column public.budget_status.percent_committed is '(Spend + reservations) as % of the limit: what a hard cap compares.';
comment on column public.budget_status.projected_spend_usd is 'Spend extrapolated linearly to the end of the month, USD.';
comment on column public.budget_status.projected_percent is 'Projected spend as % of the limit.';
comment on column public.budget_status.calls is 'Settled calls this month.';
comment on column public.budget_status.hard_cap is 'Whether the budget refuses requests past the limit.';
comment on column public.budget_status.exempt_critical is 'Whether critical features pass the hard cap.';
comment on column public.budget_status.thresholds is 'Alert thresholds, % of the limit.';

-- ----------------------------------------------------------------------------
-- rejections_by_layer: refused requests per UTC day, layer, code and feature
-- ----------------------------------------------------------------------------
create view public.rejections_by_layer
with (security_invoker = true)
as
select
  (r.created_at at time zone 'UTC')::date as day,
  r.layer,
  r.code,
  r.feature,
  count(*) as rejections,
  count(distinct r.user_id) as users
from tollgate.rejections as r
group by 1, r.layer, r.code, r.feature
order by 1 desc, rejections desc;
comment on view public.rejections_by_layer is
  'Requests refused by admission per UTC day, layer (request, feature, anomaly, budget, throttle, user_window, user_cost_cap, upstream), code and feature, load-shedding downgrades included (code downgraded); last 30 days. Studio only.';
comment on column public.rejections_by_layer.day is 'UTC day.';
comment on column public.rejections_by_layer.layer is 'The layer that said no.';
comment on column public.rejections_by_layer.code is 'The stable code returned to the client.';
comment on column public.rejections_by_layer.feature is 'The feature requested.';
comment on column public.rejections_by_layer.rejections is 'Refused requests.';
comment on column public.rejections_by_layer.users is 'Distinct users refused.';

-- ----------------------------------------------------------------------------
-- my_usage: a signed-in user's own daily usage (supabase-js: from('my_usage'))
-- ----------------------------------------------------------------------------
-- RLS on user_usage_daily already limits a user to their own rows; the filter here
-- says the same thing to the planner and returns nothing to callers without a user.
create view public.my_usage
with (security_invoker = true)
as
select
  d.day,
  d.calls,
  d.input_tokens,
  d.output_tokens,
  d.input_tokens + d.output_tokens as total_tokens,
  d.cost_usd,
  d.cache_hits,
  d.errors,
  d.reserved_tokens,
  d.reserved_cost_usd
from public.user_usage_daily as d
where d.user_id = (select auth.uid());
comment on view public.my_usage is
  'The signed-in user''s own usage per UTC day (RLS on user_usage_daily). Readable by authenticated users through the Data API.';
comment on column public.my_usage.day is 'UTC day.';
comment on column public.my_usage.calls is 'Calls completed that day.';
comment on column public.my_usage.input_tokens is 'Input tokens.';
comment on column public.my_usage.output_tokens is 'Output tokens.';
comment on column public.my_usage.total_tokens is 'Input + output tokens (what the token quotas count).';
comment on column public.my_usage.cost_usd is 'Cost, USD.';
comment on column public.my_usage.cache_hits is 'Calls answered from the cache.';
comment on column public.my_usage.errors is 'Calls that failed (error or timeout).';
comment on column public.my_usage.reserved_tokens is 'Tokens reserved by requests still in flight.';
comment on column public.my_usage.reserved_cost_usd is 'Cost reserved by requests still in flight, USD.';

-- ----------------------------------------------------------------------------
-- Privileges: Supabase's default privileges grant everything in public to the API
-- roles; take it all back, then grant exactly what each view is for.
-- ----------------------------------------------------------------------------
revoke all on public.daily_cost_summary, public.cost_by_feature, public.cost_by_user,
  public.budget_status, public.rejections_by_layer, public.my_usage
  from public, anon, authenticated, service_role;
grant select on public.daily_cost_summary, public.cost_by_feature, public.cost_by_user,
  public.budget_status, public.rejections_by_layer
  to service_role;
grant select on public.my_usage to authenticated;
