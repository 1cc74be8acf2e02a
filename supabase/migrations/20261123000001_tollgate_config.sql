-- ============================================================================
-- Tollgate 1/6: the `tollgate` schema and the gateway's configuration
--
-- Tollgate keeps two kinds of objects in the database:
--   * schema `tollgate` (this file and the next ones): the gateway's SQL API
--     (`tollgate.admit`, `tollgate.settle`, the jobs) and its configuration and
--     state tables. The Data API does not expose this schema and no client role
--     may use it: only `postgres` (which owns everything and is what the `ai`
--     edge function connects as, through SUPABASE_DB_URL) and `service_role`
--     (execute on the API functions, for server-side tools) reach it.
--   * schema `public`: the seeds' tables `api_usage` and `ai_api_calls`, the
--     per-user daily rollup, and the views that Studio (and, for `my_usage`,
--     signed-in users) read.
--
-- Operators change the configuration with plain SQL in Studio's SQL editor, e.g.
--   update tollgate.budgets set monthly_limit_usd = 500 where scope = 'global';
--   insert into tollgate.user_plans (user_id, tier) values ('…', 'pro');
--
-- Conventions: money is `numeric` (exact) in USD, never float; days and months
-- are UTC; every table has row level security enabled (no policies on the
-- `tollgate` tables: no client may read them at all).
-- ============================================================================

-- ----------------------------------------------------------------------------
-- Schema and default privileges
-- ----------------------------------------------------------------------------
create schema if not exists tollgate;
comment on schema tollgate is
  'Tollgate AI gateway: SQL API (admit, settle, jobs) and configuration/state tables. Not exposed to the Data API; clients (anon, authenticated) have no access.';

revoke all on schema tollgate from public, anon, authenticated;
grant usage on schema tollgate to service_role;

-- New functions are executable by PUBLIC unless revoked: make "nobody" the default
-- here, and grant execute explicitly next to each API function.
alter default privileges in schema tollgate revoke execute on functions from public;
alter default privileges in schema tollgate revoke all on tables from public;

-- pg_cron runs the jobs (see the jobs migration). On hosted Supabase `postgres` may
-- enable it, in pg_catalog as Supabase's dashboard does (never in public: advisor
-- 0014); where it already exists this is a no-op.
create extension if not exists pg_cron with schema pg_catalog;

-- ----------------------------------------------------------------------------
-- Small helpers (internal)
-- ----------------------------------------------------------------------------
-- Note for the hot path: every function here must `set search_path` (advisor 0011),
-- and a SQL function with a SET clause is never inlined — each call costs a function
-- call and a plan. So admit() and settle() parse their input inline, not through
-- helpers like these.

-- The first instant of the next UTC month after `at`.
create function tollgate.next_month_start(at timestamptz)
returns timestamptz
language sql
immutable
parallel safe
set search_path = ''
as $$
  select (date_trunc('month', at at time zone 'UTC') + interval '1 month') at time zone 'UTC'
$$;
comment on function tollgate.next_month_start(timestamptz) is
  'Internal: start of the UTC month after `at` (when monthly budgets, quotas and caps reset).';

revoke all on function tollgate.next_month_start(timestamptz) from public, anon, authenticated;

-- The most elements one admission or settlement batch holds (admit_many and
-- settle_many, in the batches migration). The function's batches are no larger
-- (MAX_BATCH_SIZE in supabase/functions/_shared/batching.ts; the tests hold the two
-- equal), and the upstream step's margin counts on this bound (provider_room).
create function tollgate.max_batch_size()
returns integer
language sql
immutable
parallel safe
set search_path = ''
as $$
  select 32
$$;
comment on function tollgate.max_batch_size() is
  'Internal: the most elements an admission or settlement batch holds (admit_many, settle_many).';

revoke all on function tollgate.max_batch_size() from public, anon, authenticated;

-- Keeps `updated_at` current on configuration tables edited by hand in Studio.
create function tollgate.touch_updated_at()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end;
$$;
comment on function tollgate.touch_updated_at() is
  'Trigger: sets updated_at on UPDATE of a configuration row.';
revoke all on function tollgate.touch_updated_at() from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- Tiers: request windows, token quotas and the monthly cost cap of a plan
-- ----------------------------------------------------------------------------
create table tollgate.tiers (
  name text primary key check (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
  description text not null default '',
  daily_token_quota bigint check (daily_token_quota > 0),
  monthly_token_quota bigint check (monthly_token_quota > 0),
  monthly_cost_cap_usd numeric(14, 6) check (monthly_cost_cap_usd >= 0),
  max_output_tokens integer not null default 4096 check (max_output_tokens between 1 and 1000000),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table tollgate.tiers is
  'Plans a user can be on. `anonymous` (anonymous sign-ins) and `free` are the defaults for users without a row in user_plans. Request windows are in tier_windows.';
comment on column tollgate.tiers.name is 'Tier id, referenced by user_plans and tier_windows (`anonymous`, `free`, `pro`, …).';
comment on column tollgate.tiers.description is 'What the tier is, for people.';
comment on column tollgate.tiers.daily_token_quota is
  'Input+output tokens per UTC day. At 100% the user is served in restricted mode (not cut off). Null: no quota.';
comment on column tollgate.tiers.monthly_token_quota is
  'Input+output tokens per UTC month. At 100% the user is served in restricted mode. Null: no quota.';
comment on column tollgate.tiers.monthly_cost_cap_usd is
  'Hard cap on a user''s spend per UTC month (USD, reservations included): past it requests are refused (`cost_cap_exceeded`). Null: no cap.';
comment on column tollgate.tiers.max_output_tokens is 'Upper bound of max_tokens for any request of this tier.';
comment on column tollgate.tiers.created_at is 'When the row was created.';
comment on column tollgate.tiers.updated_at is 'When the row was last changed.';

create table tollgate.tier_windows (
  tier text not null references tollgate.tiers (name) on update cascade on delete cascade,
  name text not null check (name ~ '^[a-z][a-z0-9_-]{0,30}$'),
  window_seconds integer not null check (window_seconds between 1 and 86400),
  max_requests integer not null check (max_requests >= 0),
  primary key (tier, name)
);
comment on table tollgate.tier_windows is
  'Sliding request windows of a tier (e.g. 10 per minute AND 20 per hour): a request is admitted only while every window has room. Counted over public.api_usage; api_usage is pruned beyond the longest window, so windows are at most one day.';
comment on column tollgate.tier_windows.tier is 'The tier this window belongs to.';
comment on column tollgate.tier_windows.name is 'Window name shown to clients (`minute`, `hour`, …).';
comment on column tollgate.tier_windows.window_seconds is 'Window length in seconds (1 s to 1 day).';
comment on column tollgate.tier_windows.max_requests is 'Admitted requests allowed within any window of that length.';

-- ----------------------------------------------------------------------------
-- User plans: which tier a user is on, with optional per-user overrides
-- ----------------------------------------------------------------------------
create table tollgate.user_plans (
  user_id uuid primary key references auth.users (id) on delete cascade,
  tier text not null references tollgate.tiers (name) on update cascade,
  daily_token_quota bigint check (daily_token_quota > 0),
  monthly_token_quota bigint check (monthly_token_quota > 0),
  monthly_cost_cap_usd numeric(14, 6) check (monthly_cost_cap_usd >= 0),
  note text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index user_plans_tier_idx on tollgate.user_plans (tier);
comment on table tollgate.user_plans is
  'A user''s tier, set by the operator (or a billing webhook). Users without a row are on `free`, or `anonymous` for anonymous sign-ins.';
comment on column tollgate.user_plans.user_id is 'The Supabase Auth user.';
comment on column tollgate.user_plans.tier is 'The user''s tier.';
comment on column tollgate.user_plans.daily_token_quota is 'Overrides the tier''s daily token quota for this user. Null: the tier''s.';
comment on column tollgate.user_plans.monthly_token_quota is 'Overrides the tier''s monthly token quota. Null: the tier''s.';
comment on column tollgate.user_plans.monthly_cost_cap_usd is 'Overrides the tier''s monthly cost cap (USD). Null: the tier''s.';
comment on column tollgate.user_plans.note is 'Why this user has this plan (for people).';
comment on column tollgate.user_plans.created_at is 'When the row was created.';
comment on column tollgate.user_plans.updated_at is 'When the row was last changed.';

-- ----------------------------------------------------------------------------
-- Features: what a call is for (header x-tollgate-feature), and its rules
-- ----------------------------------------------------------------------------
create table tollgate.features (
  name text primary key check (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
  description text not null default '',
  priority text not null default 'normal' check (priority in ('critical', 'normal', 'batch', 'background')),
  allowed_models text[],
  max_tokens integer not null default 1024 check (max_tokens between 1 and 1000000),
  restricted_max_tokens integer not null default 256 check (restricted_max_tokens between 1 and 1000000),
  cache_ttl_seconds integer not null default 0 check (cache_ttl_seconds between 0 and 2592000),
  stale_cache_seconds integer not null default 0 check (stale_cache_seconds between 0 and 2592000),
  paused boolean not null default false,
  paused_reason text,
  paused_since timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table tollgate.features is
  'Features a call can be attributed to (header x-tollgate-feature, default `default`). An unknown feature is refused (`unknown_feature`): add a row to enable one.';
comment on column tollgate.features.name is 'Feature id as clients send it.';
comment on column tollgate.features.description is 'What the feature is, for people.';
comment on column tollgate.features.priority is
  'critical (interactive): runs while throttled or anomaly-paused (and past a hard cap when the budget exempts critical work), first in the upstream queue, never shed; normal: restricted mode while throttled, refused while anomaly-paused, downgraded when the upstream queue is deep; batch: like normal, but refused (shed) when the upstream queue is deep; background: refused while throttled or anomaly-paused, shed first. See tollgate.priority_classes.';
comment on column tollgate.features.allowed_models is 'Models a client may request for this feature. Null: any model.';
comment on column tollgate.features.max_tokens is 'Default and upper bound of a request''s max output tokens.';
comment on column tollgate.features.restricted_max_tokens is 'max output tokens in restricted mode (throttle, or a user past a token quota).';
comment on column tollgate.features.cache_ttl_seconds is 'Exact-match response cache lifetime; 0 disables the cache for the feature (a request may still enable it).';
comment on column tollgate.features.stale_cache_seconds is 'How long after a cache entry expires it may still be served when every provider of the route is down (graceful degradation, seed 000). 0: never.';
comment on column tollgate.features.paused is 'Operator switch: refuse every call of this feature (`feature_paused`).';
comment on column tollgate.features.paused_reason is 'Why the feature is paused (shown to clients).';
comment on column tollgate.features.paused_since is 'When the feature was paused.';
comment on column tollgate.features.created_at is 'When the row was created.';
comment on column tollgate.features.updated_at is 'When the row was last changed.';

-- ----------------------------------------------------------------------------
-- Budgets: monthly USD limits, global and per feature
-- ----------------------------------------------------------------------------
create table tollgate.budgets (
  id bigint generated always as identity primary key,
  scope text not null check (scope in ('global', 'feature')),
  feature text references tollgate.features (name) on update cascade on delete cascade,
  monthly_limit_usd numeric(14, 6) not null check (monthly_limit_usd > 0),
  hard_cap boolean not null default true,
  exempt_critical boolean not null default true,
  thresholds integer[] not null default '{50,75,90,100}'
    check (cardinality(thresholds) between 1 and 20 and 0 < all (thresholds) and 1000 >= all (thresholds)),
  note text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint budgets_scope_feature check ((scope = 'global') = (feature is null))
);
-- At most one global budget and one budget per feature.
create unique index budgets_one_global_idx on tollgate.budgets ((true)) where scope = 'global';
create unique index budgets_one_per_feature_idx on tollgate.budgets (feature) where scope = 'feature';
comment on table tollgate.budgets is
  'Monthly spend limits: one global budget and optionally one per feature. Admission reserves each request''s estimated cost against every budget that applies; a hard cap refuses a request whose estimate would take spend + reservations past the limit. Month-to-date figures: budget_periods and budget_settlements (public.budget_status sums them); alerts at the thresholds are the budget guard''s job.';
comment on column tollgate.budgets.id is 'Budget id.';
comment on column tollgate.budgets.scope is '`global` (every call) or `feature` (calls of one feature).';
comment on column tollgate.budgets.feature is 'The feature of a `feature` budget; null for the global budget.';
comment on column tollgate.budgets.monthly_limit_usd is 'Spend limit per UTC month, USD.';
comment on column tollgate.budgets.hard_cap is 'Refuse requests (`budget_exceeded`) that would pass the limit. False: alerts only.';
comment on column tollgate.budgets.exempt_critical is 'Critical features pass the hard cap (their spend still counts).';
comment on column tollgate.budgets.thresholds is 'Percentages of the limit at which the budget guard alerts (50 info, 75 investigate, 90 throttle, 100 hard cap).';
comment on column tollgate.budgets.note is 'Notes for people.';
comment on column tollgate.budgets.created_at is 'When the row was created.';
comment on column tollgate.budgets.updated_at is 'When the row was last changed.';

-- A budget's month is kept in two sharded tables, so that requests of different
-- database sessions do not wait for each other (see the CONCURRENCY note on admit()):
--   budget_periods      per budget, month and shard: the estimates admission
--                       reserved, and the share of a hard-capped budget the shard
--                       holds (its lease). Only admit() writes it: one conditional
--                       UPDATE of its session's shard, as its last write; a shard
--                       whose lease runs short takes more under the budget's lock
--                       (tollgate.lease_budget).
--   budget_settlements  per budget, month and shard: what settlement released and
--                       what the calls actually cost. settle() and the expiry job
--                       add to the shard of their database session.
-- In flight = sum(reserved_total_usd) - sum(released_usd); spent = sum(spent_usd);
-- committed (what a hard cap compares) = spent + in flight. public.budget_status
-- shows these figures.
create table tollgate.budget_periods (
  budget_id bigint not null references tollgate.budgets (id) on delete cascade,
  period_start date not null check (period_start = date_trunc('month', period_start::timestamp)::date),
  shard smallint not null check (shard between 0 and 15),
  reserved_total_usd numeric(18, 6) not null default 0,
  leased_usd numeric(18, 6) not null default 0,
  updated_at timestamptz not null default now(),
  primary key (budget_id, period_start, shard)
) with (fillfactor = 50);
comment on table tollgate.budget_periods is
  'Per budget, UTC month and shard (pg_backend_pid() % 16 of the admitting session): the sum of every estimate admit() reserved, and the part of a hard-capped budget the shard may reserve without the budget''s lock. admit() alone writes it. With budget_settlements it gives month-to-date spend and reservations in flight; sum over shards to read it.';
comment on column tollgate.budget_periods.budget_id is 'The budget.';
comment on column tollgate.budget_periods.period_start is 'First day of the UTC month.';
comment on column tollgate.budget_periods.shard is 'pg_backend_pid() % 16 of the admitting database session.';
comment on column tollgate.budget_periods.reserved_total_usd is 'Sum of the estimates of every request this shard admitted against the budget this month, USD (only grows).';
comment on column tollgate.budget_periods.leased_usd is 'Hard caps: how much of the budget this shard holds, USD; its requests reserve within it (reserved_total_usd <= leased_usd; critical requests exempt from the cap may overdraw). Every lease is granted under the budget''s lock, so leases, spend and releases never add up past the limit.';
comment on column tollgate.budget_periods.updated_at is 'Last change.';

create table tollgate.budget_settlements (
  budget_id bigint not null references tollgate.budgets (id) on delete cascade,
  period_start date not null check (period_start = date_trunc('month', period_start::timestamp)::date),
  shard smallint not null check (shard between 0 and 15),
  spent_usd numeric(18, 6) not null default 0,
  released_usd numeric(18, 6) not null default 0,
  calls bigint not null default 0,
  updated_at timestamptz not null default now(),
  primary key (budget_id, period_start, shard)
) with (fillfactor = 50);
comment on table tollgate.budget_settlements is
  'Per budget, UTC month and shard: settled spend and released estimates. Sharded by database session (pg_backend_pid() % 16) so concurrent settlements do not contend; sum over shards to read it.';
comment on column tollgate.budget_settlements.budget_id is 'The budget.';
comment on column tollgate.budget_settlements.period_start is 'First day of the UTC month (of the calls'' admission).';
comment on column tollgate.budget_settlements.shard is 'Contention shard, 0..15.';
comment on column tollgate.budget_settlements.spent_usd is 'Actual cost of settled calls (expired ones at their estimate), USD.';
comment on column tollgate.budget_settlements.released_usd is 'Estimates those calls had reserved, now released, USD.';
comment on column tollgate.budget_settlements.calls is 'Settled calls.';
comment on column tollgate.budget_settlements.updated_at is 'Last change.';

-- ----------------------------------------------------------------------------
-- Gateway state: the flags the budget guard jobs set and admission obeys
-- ----------------------------------------------------------------------------
create table tollgate.gateway_state (
  id boolean primary key default true check (id),
  throttled boolean not null default false,
  throttle_reason text,
  throttled_since timestamptz,
  anomaly_paused boolean not null default false,
  anomaly_reason text,
  anomaly_paused_since timestamptz,
  updated_at timestamptz not null default now()
);
comment on table tollgate.gateway_state is
  'Single row of gateway-wide flags. throttled (set at 90% of the global budget): background features refused, normal ones in restricted mode, critical ones as usual. anomaly_paused (spend rate far above baseline): non-critical features refused.';
comment on column tollgate.gateway_state.id is 'Always true: the table holds exactly one row.';
comment on column tollgate.gateway_state.throttled is 'Throttle on: shed background work, restrict normal work.';
comment on column tollgate.gateway_state.throttle_reason is 'Why the throttle is on (shown to clients).';
comment on column tollgate.gateway_state.throttled_since is 'When the throttle was set.';
comment on column tollgate.gateway_state.anomaly_paused is 'Anomaly breaker tripped: refuse non-critical features.';
comment on column tollgate.gateway_state.anomaly_reason is 'Why the breaker tripped (shown to clients).';
comment on column tollgate.gateway_state.anomaly_paused_since is 'When the breaker tripped.';
comment on column tollgate.gateway_state.updated_at is 'Last change.';

insert into tollgate.gateway_state (id) values (true);

-- ----------------------------------------------------------------------------
-- Routes: the provider fallback chain of a requested model
-- ----------------------------------------------------------------------------
create table tollgate.routes (
  model text primary key check (length(model) between 1 and 200),
  cheaper_model text check (cheaper_model <> model),
  description text not null default ''
);
comment on table tollgate.routes is
  'Models with a configured fallback chain (steps in route_targets). A model without a row routes to one provider by name: `claude*` to anthropic, anything else to openai.';
comment on column tollgate.routes.model is 'The model a client asks for.';
comment on column tollgate.routes.cheaper_model is 'The model restricted mode substitutes (throttle, user past a token quota). Null: keep the model, only max_tokens shrinks.';
comment on column tollgate.routes.description is 'Notes for people.';

create table tollgate.route_targets (
  route_model text not null references tollgate.routes (model) on update cascade on delete cascade,
  position smallint not null check (position between 1 and 10),
  provider text not null check (provider ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
  model text not null check (length(model) between 1 and 200),
  primary key (route_model, position)
);
comment on table tollgate.route_targets is
  'Steps of a route, tried in position order: the first is the primary, the others are fallbacks (possibly on another provider, the function translates the wire format).';
comment on column tollgate.route_targets.route_model is 'The requested model (routes.model).';
comment on column tollgate.route_targets.position is '1 = primary, 2.. = fallbacks in order.';
comment on column tollgate.route_targets.provider is 'Provider id: `openai`, `anthropic`, or an OpenAI-compatible provider configured in the function.';
comment on column tollgate.route_targets.model is 'The model name to send to that provider.';

-- ----------------------------------------------------------------------------
-- Model prices: operator overrides of the function's price library
-- ----------------------------------------------------------------------------
create table tollgate.model_prices (
  provider text not null check (provider ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
  model text not null check (length(model) between 1 and 200 and model = lower(model)),
  input_per_mtok numeric(12, 6) not null check (input_per_mtok >= 0),
  output_per_mtok numeric(12, 6) not null check (output_per_mtok >= 0),
  cached_input_per_mtok numeric(12, 6) check (cached_input_per_mtok >= 0),
  cache_write_per_mtok numeric(12, 6) check (cache_write_per_mtok >= 0),
  note text,
  updated_at timestamptz not null default now(),
  primary key (provider, model)
);
comment on table tollgate.model_prices is
  'Price overrides in USD per million tokens. Without a row the function prices calls with its maintained price library; with one, admission estimates with it and the function prices settlement with it (admit returns the rows of the route).';
comment on column tollgate.model_prices.provider is 'Provider id.';
comment on column tollgate.model_prices.model is 'Model name, lower case, without a snapshot date (a dated snapshot matches its undated row).';
comment on column tollgate.model_prices.input_per_mtok is 'USD per million plain input tokens.';
comment on column tollgate.model_prices.output_per_mtok is 'USD per million output tokens (reasoning included).';
comment on column tollgate.model_prices.cached_input_per_mtok is 'USD per million input tokens read from the provider''s prompt cache. Null: charged as plain input.';
comment on column tollgate.model_prices.cache_write_per_mtok is 'USD per million input tokens written to the prompt cache. Null: charged as plain input.';
comment on column tollgate.model_prices.note is 'Source of the price (for people).';
comment on column tollgate.model_prices.updated_at is 'Last change.';

-- ----------------------------------------------------------------------------
-- Provider health: the circuit breaker per provider and model, shared by isolates
-- ----------------------------------------------------------------------------
create table tollgate.provider_health (
  provider text not null,
  model text not null,
  state text not null default 'closed' check (state in ('closed', 'open', 'half_open')),
  consecutive_failures integer not null default 0 check (consecutive_failures >= 0),
  consecutive_429s integer not null default 0 check (consecutive_429s >= 0),
  failure_threshold integer not null default 3 check (failure_threshold between 1 and 100),
  cooldown_seconds integer not null default 60 check (cooldown_seconds between 1 and 86400),
  opened_at timestamptz,
  probe_request_id uuid,
  probe_started_at timestamptz,
  last_status integer,
  last_failure_at timestamptz,
  last_success_at timestamptz,
  updated_at timestamptz not null default now(),
  primary key (provider, model)
) with (fillfactor = 70);
comment on table tollgate.provider_health is
  'Circuit breaker per provider+model (seed: 3 consecutive errors open it, 60 s cooldown). settle() counts failures and closes on success; after the cooldown admit() hands exactly one request a half-open probe. No row: closed.';
comment on column tollgate.provider_health.provider is 'Provider id.';
comment on column tollgate.provider_health.model is 'Model name as sent to the provider.';
comment on column tollgate.provider_health.state is 'closed: in use; open: skipped until the cooldown ends; half_open: one probe request is in flight.';
comment on column tollgate.provider_health.consecutive_failures is 'Failed attempts since the last success.';
comment on column tollgate.provider_health.consecutive_429s is 'Consecutive 429 answers (rate limited): at upstream_settings.rate_limit_streak an alert is raised (seed 003).';
comment on column tollgate.provider_health.failure_threshold is 'Consecutive failures that open the breaker.';
comment on column tollgate.provider_health.cooldown_seconds is 'Seconds an open breaker waits before a probe (also how long a probe may take before another is granted).';
comment on column tollgate.provider_health.opened_at is 'When the breaker last opened.';
comment on column tollgate.provider_health.probe_request_id is 'The request granted the current half-open probe.';
comment on column tollgate.provider_health.probe_started_at is 'When that probe was granted.';
comment on column tollgate.provider_health.last_status is 'HTTP status of the last failed attempt (0: network error or timeout).';
comment on column tollgate.provider_health.last_failure_at is 'Last failed attempt.';
comment on column tollgate.provider_health.last_success_at is 'Last successful attempt that changed the state.';
comment on column tollgate.provider_health.updated_at is 'Last change.';

-- ----------------------------------------------------------------------------
-- Response cache: opt-in exact-match cache (per feature TTL or per request)
-- ----------------------------------------------------------------------------
create table tollgate.response_cache (
  cache_key text primary key check (length(cache_key) between 1 and 512),
  feature text not null,
  provider text not null,
  model text not null,
  response jsonb not null,
  cost_usd numeric(10, 6) not null default 0 check (cost_usd >= 0),
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  stale_until timestamptz check (stale_until >= expires_at)
);
create index response_cache_expires_at_idx on tollgate.response_cache (expires_at);
comment on table tollgate.response_cache is
  'Exact-match responses stored by settle() (cache_entry) and returned by admit() while fresh. The key is the function''s hash of everything that shapes the answer. Pruned by prune_api_usage().';
comment on column tollgate.response_cache.cache_key is 'The function''s key (hash of model, messages and parameters).';
comment on column tollgate.response_cache.feature is 'Feature of the call that filled the entry.';
comment on column tollgate.response_cache.provider is 'Provider that produced the response.';
comment on column tollgate.response_cache.model is 'Model that produced the response.';
comment on column tollgate.response_cache.response is 'The response body to replay (the function''s format).';
comment on column tollgate.response_cache.cost_usd is 'What producing the response cost: what each hit saves.';
comment on column tollgate.response_cache.created_at is 'When the entry was stored.';
comment on column tollgate.response_cache.expires_at is 'After this the entry is not served while a provider can answer.';
comment on column tollgate.response_cache.stale_until is 'Until then the entry may still be served when every provider is down (expires_at + the feature''s stale_cache_seconds; null: not at all); pruned after it.';

-- ----------------------------------------------------------------------------
-- Row level security and privileges for every table of this file
-- ----------------------------------------------------------------------------
-- RLS on, no policies: only the owner (postgres) and roles that bypass RLS read these.
alter table tollgate.tiers enable row level security;
alter table tollgate.tier_windows enable row level security;
alter table tollgate.user_plans enable row level security;
alter table tollgate.features enable row level security;
alter table tollgate.budgets enable row level security;
alter table tollgate.budget_periods enable row level security;
alter table tollgate.budget_settlements enable row level security;
alter table tollgate.gateway_state enable row level security;
alter table tollgate.routes enable row level security;
alter table tollgate.route_targets enable row level security;
alter table tollgate.model_prices enable row level security;
alter table tollgate.provider_health enable row level security;
alter table tollgate.response_cache enable row level security;

revoke all on all tables in schema tollgate from public, anon, authenticated;
grant select on all tables in schema tollgate to service_role;

create trigger tiers_touch before update on tollgate.tiers
  for each row execute function tollgate.touch_updated_at();
create trigger user_plans_touch before update on tollgate.user_plans
  for each row execute function tollgate.touch_updated_at();
create trigger features_touch before update on tollgate.features
  for each row execute function tollgate.touch_updated_at();
create trigger budgets_touch before update on tollgate.budgets
  for each row execute function tollgate.touch_updated_at();
create trigger model_prices_touch before update on tollgate.model_prices
  for each row execute function tollgate.touch_updated_at();

-- ----------------------------------------------------------------------------
-- Seed configuration (the seeds' numbers; operators edit these rows)
-- ----------------------------------------------------------------------------
insert into tollgate.tiers (name, description, daily_token_quota, monthly_token_quota, monthly_cost_cap_usd, max_output_tokens)
values
  ('anonymous', 'Anonymous sign-ins: smaller than free.', 20000, 200000, 0.50, 512),
  ('free', 'Default for signed-in users: 20 requests/hour (seed 000), 10/minute burst (seed 001).', 100000, 1000000, 2.00, 1024),
  ('pro', 'Paid users: 100 requests/hour (seed 000), 60/minute burst (seed 001).', 1000000, 20000000, 50.00, 4096);

insert into tollgate.tier_windows (tier, name, window_seconds, max_requests)
values
  ('anonymous', 'minute', 60, 5),
  ('anonymous', 'hour', 3600, 10),
  ('free', 'minute', 60, 10),
  ('free', 'hour', 3600, 20),
  ('pro', 'minute', 60, 60),
  ('pro', 'hour', 3600, 100);

insert into tollgate.features (name, description, priority, max_tokens, restricted_max_tokens)
values ('default', 'Calls without an x-tollgate-feature header.', 'normal', 1024, 256);

insert into tollgate.budgets (scope, monthly_limit_usd, hard_cap, note)
values ('global', 100, true, 'Starting point: set it to what you can afford per month.');

insert into tollgate.routes (model, cheaper_model, description)
values
  ('gpt-4o-mini', null, 'OpenAI first, Anthropic Haiku as fallback.'),
  ('gpt-4o', 'gpt-4o-mini', 'OpenAI first, Anthropic Sonnet as fallback.'),
  ('gpt-4.1', 'gpt-4.1-mini', 'OpenAI first, Anthropic Sonnet as fallback.'),
  ('gpt-4.1-mini', 'gpt-4o-mini', 'OpenAI first, Anthropic Haiku as fallback.'),
  ('claude-sonnet-4-6', 'claude-haiku-4-5', 'Anthropic first, OpenAI gpt-4o as fallback (seed 000: Claude -> GPT).'),
  ('claude-haiku-4-5', null, 'Anthropic first, OpenAI gpt-4o-mini as fallback.'),
  ('claude-opus-4-6', 'claude-sonnet-4-6', 'Anthropic first, OpenAI gpt-4.1 as fallback.');

insert into tollgate.route_targets (route_model, position, provider, model)
values
  ('gpt-4o-mini', 1, 'openai', 'gpt-4o-mini'),
  ('gpt-4o-mini', 2, 'anthropic', 'claude-haiku-4-5'),
  ('gpt-4o', 1, 'openai', 'gpt-4o'),
  ('gpt-4o', 2, 'anthropic', 'claude-sonnet-4-6'),
  ('gpt-4.1', 1, 'openai', 'gpt-4.1'),
  ('gpt-4.1', 2, 'anthropic', 'claude-sonnet-4-6'),
  ('gpt-4.1-mini', 1, 'openai', 'gpt-4.1-mini'),
  ('gpt-4.1-mini', 2, 'anthropic', 'claude-haiku-4-5'),
  ('claude-sonnet-4-6', 1, 'anthropic', 'claude-sonnet-4-6'),
  ('claude-sonnet-4-6', 2, 'openai', 'gpt-4o'),
  ('claude-haiku-4-5', 1, 'anthropic', 'claude-haiku-4-5'),
  ('claude-haiku-4-5', 2, 'openai', 'gpt-4o-mini'),
  ('claude-opus-4-6', 1, 'anthropic', 'claude-opus-4-6'),
  ('claude-opus-4-6', 2, 'openai', 'gpt-4.1');
