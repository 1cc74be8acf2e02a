-- ============================================================================
-- Tollgate 2/6: what happened — the call log, the window log, rollups, rejections
--
--   public.api_usage         the seeds' sliding-window log: one row per admitted
--                            request, a reservation until settled (pruned).
--   public.ai_api_calls      the seeds' call log: one row per admitted request once
--                            settled or expired (kept).
--   public.user_usage_daily  per user and UTC day: tokens, cost, reservations.
--   tollgate.usage_daily     per UTC day, provider, model and feature: what the cost
--                            views read, so they never scan ai_api_calls.
--   tollgate.rejections      insert-only log of refused requests.
--
-- Only tollgate.admit / settle / expire_reservations / prune_api_usage write here.
-- A signed-in user may read their own rows of the three public tables (RLS);
-- anon reads nothing; no client writes anything.
-- ============================================================================

-- ----------------------------------------------------------------------------
-- public.api_usage: the sliding-window log and the reservations
-- ----------------------------------------------------------------------------
-- No foreign key to auth.users on purpose: admit() checks that the user exists, and
-- a foreign key would take a row lock on the user's auth.users row for every request.
-- Rows of deleted users age out with the pruning. fillfactor leaves room on each page
-- for the one update a row gets (its settlement), so that update can be HOT.
create table public.api_usage (
  request_id uuid primary key,
  user_id uuid not null,
  created_at timestamptz not null default now(),
  tokens_used integer not null default 0 check (tokens_used >= 0),
  estimated_cost numeric(10, 6) not null default 0 check (estimated_cost >= 0),
  feature text not null,
  provider text not null,
  model text not null,
  status text not null default 'reserved' check (status in ('reserved', 'settled', 'expired')),
  estimated_input_tokens integer not null default 0 check (estimated_input_tokens >= 0),
  max_output_tokens integer not null default 0 check (max_output_tokens >= 0),
  reserved_cost numeric(10, 6) not null default 0 check (reserved_cost >= 0),
  budget_ids bigint[] not null default '{}',
  cached boolean not null default false,
  provider_key text,
  holds_upstream_slot boolean not null default false,
  settled_at timestamptz
) with (fillfactor = 60);
comment on table public.api_usage is
  'One row per admitted request (seed 000''s sliding-window log). Written by tollgate.admit as a reservation (status reserved, estimated tokens and cost), completed by tollgate.settle with the actual numbers, or expired by tollgate.expire_reservations. Rows older than the longest tier window are pruned. Users read their own rows.';
comment on column public.api_usage.user_id is 'The user the request counts against.';
comment on column public.api_usage.created_at is 'When the request was admitted (the sliding windows count this).';
comment on column public.api_usage.tokens_used is 'Seed column: estimated input + max output tokens while reserved; actual input + output tokens once settled.';
comment on column public.api_usage.estimated_cost is 'Seed column: estimated cost (USD) while reserved; actual cost once settled.';
comment on column public.api_usage.request_id is 'The gateway''s request id (primary key): what settle() finds the reservation by.';
comment on column public.api_usage.feature is 'Feature the request is attributed to.';
comment on column public.api_usage.provider is 'Primary provider of the route at admission (the one that answered once settled).';
comment on column public.api_usage.model is 'Model after routing/restricted mode at admission (the one that answered once settled).';
comment on column public.api_usage.status is 'reserved: in flight; settled: settle() recorded it; expired: never settled in time, charged at its estimate.';
comment on column public.api_usage.estimated_input_tokens is 'Input tokens the function estimated before the call.';
comment on column public.api_usage.max_output_tokens is 'Output tokens reserved (the effective max_tokens).';
comment on column public.api_usage.reserved_cost is 'Estimated cost reserved against the user and the budgets (released at settlement).';
comment on column public.api_usage.budget_ids is 'Budgets the estimate was reserved against (tollgate.budgets ids).';
comment on column public.api_usage.cached is 'Served from the response cache: counts in the windows, reserves nothing.';
comment on column public.api_usage.provider_key is 'Label of the provider key admission chose (tollgate.provider_keys), when the provider has registered keys.';
comment on column public.api_usage.holds_upstream_slot is 'The call holds one of its key''s max_in_flight slots while reserved.';
comment on column public.api_usage.settled_at is 'When settle() or the expiry job completed the reservation.';

-- The sliding windows: count a user's rows in (now - window, now]. Also serves RLS.
create index api_usage_user_created_idx on public.api_usage (user_id, created_at);
-- The expiry job's scan: only the few rows still in flight.
create index api_usage_reserved_idx on public.api_usage (created_at) where status = 'reserved';
-- Calls holding a key's in-flight slot (tollgate.key_in_flight): only keys with a ceiling.
create index api_usage_upstream_slots_idx on public.api_usage (provider, provider_key)
  where status = 'reserved' and holds_upstream_slot;
-- Pruning by age: rows arrive in time order, so a BRIN index is tiny and cheap to keep.
create index api_usage_created_brin on public.api_usage using brin (created_at);

-- ----------------------------------------------------------------------------
-- public.ai_api_calls: the call log (seed 000's table, columns kept, extended)
-- ----------------------------------------------------------------------------
create table public.ai_api_calls (
  -- The seed's columns, exactly.
  id uuid default gen_random_uuid() primary key,
  created_at timestamptz default now(),
  user_id uuid references auth.users (id) on delete set null,
  feature text not null,
  provider text not null,
  model text not null,
  input_tokens integer not null,
  output_tokens integer not null,
  latency_ms integer not null,
  estimated_cost numeric(10, 6) not null,
  cached boolean default false,
  status text default 'success',
  -- What a real gateway also needs.
  request_id uuid not null,
  cached_input_tokens integer not null default 0,
  cache_write_tokens integer not null default 0,
  reasoning_tokens integer not null default 0,
  attempts smallint not null default 1,
  fallback_from text,
  error_code text,
  priced boolean not null default true,
  saved_cost numeric(10, 6) not null default 0,
  endpoint text,
  streamed boolean not null default false,
  provider_key text,
  settled_at timestamptz not null default now(),
  constraint ai_api_calls_request_id_key unique (request_id),
  constraint ai_api_calls_status_check
    check (status in ('success', 'error', 'timeout', 'client_closed', 'expired')),
  constraint ai_api_calls_tokens_check check (
    input_tokens >= 0 and output_tokens >= 0 and cached_input_tokens >= 0 and cache_write_tokens >= 0
    and reasoning_tokens >= 0 and latency_ms >= 0 and attempts >= 0
  ),
  constraint ai_api_calls_cost_check check (estimated_cost >= 0 and saved_cost >= 0)
);
comment on table public.ai_api_calls is
  'One row per admitted request, written by tollgate.settle (or by tollgate.expire_reservations at the estimate when never settled). The seed''s columns, plus request id, token details, attempts, fallback and error. Cost views read rollups, not this table. Users read their own rows.';
comment on column public.ai_api_calls.id is 'Row id.';
comment on column public.ai_api_calls.created_at is 'When the request was admitted (the reservation''s time, so day and month attribution never move).';
comment on column public.ai_api_calls.user_id is 'The user (null once the user is deleted: spend history stays).';
comment on column public.ai_api_calls.feature is 'Feature the call is attributed to.';
comment on column public.ai_api_calls.provider is 'Provider that answered (or was tried last when none did).';
comment on column public.ai_api_calls.model is 'Model that answered (or was tried last).';
comment on column public.ai_api_calls.input_tokens is 'Input tokens as the provider reported them, cached ones included (0 for a cache hit).';
comment on column public.ai_api_calls.output_tokens is 'Output tokens as reported, reasoning included.';
comment on column public.ai_api_calls.latency_ms is 'Time from admission to the end of the response, ms.';
comment on column public.ai_api_calls.estimated_cost is 'Seed name; the cost of the call in USD, priced from the provider''s usage (expired: the reserved estimate; cache hit: 0).';
comment on column public.ai_api_calls.cached is 'Served from the response cache.';
comment on column public.ai_api_calls.status is 'success | error (provider failed) | timeout (provider too slow) | client_closed (client went away) | expired (never settled; charged at the estimate).';
comment on column public.ai_api_calls.request_id is 'The gateway''s request id (unique): settle() is idempotent on it.';
comment on column public.ai_api_calls.cached_input_tokens is 'Input tokens read from the provider''s prompt cache (part of input_tokens).';
comment on column public.ai_api_calls.cache_write_tokens is 'Input tokens written to the provider''s prompt cache (part of input_tokens).';
comment on column public.ai_api_calls.reasoning_tokens is 'Reasoning tokens (part of output_tokens).';
comment on column public.ai_api_calls.attempts is 'Provider attempts made (retries and fallbacks included; 0 when expired).';
comment on column public.ai_api_calls.fallback_from is 'provider/model first tried, when a fallback answered.';
comment on column public.ai_api_calls.error_code is 'Stable error code when status is not success.';
comment on column public.ai_api_calls.priced is 'False when no price was known for the model: the cost is unknown, not zero.';
comment on column public.ai_api_calls.saved_cost is 'For a cache hit: what the call would have cost.';
comment on column public.ai_api_calls.endpoint is 'Gateway endpoint called (`chat.completions`, `messages`).';
comment on column public.ai_api_calls.streamed is 'The response was streamed.';
comment on column public.ai_api_calls.provider_key is 'Label of the provider key the answering attempt used (tollgate.provider_keys; never the key).';
comment on column public.ai_api_calls.settled_at is 'When the row was written or last corrected.';

-- The seed's two indexes, by their seed names.
create index idx_ai_calls_daily on public.ai_api_calls (created_at, provider);
create index idx_ai_calls_user on public.ai_api_calls (user_id, created_at);

-- ----------------------------------------------------------------------------
-- public.user_usage_daily: per user and UTC day (quotas, cost caps, my_usage)
-- ----------------------------------------------------------------------------
create table public.user_usage_daily (
  user_id uuid not null references auth.users (id) on delete cascade,
  day date not null,
  calls integer not null default 0,
  input_tokens bigint not null default 0,
  output_tokens bigint not null default 0,
  cost_usd numeric(16, 6) not null default 0,
  cache_hits integer not null default 0,
  errors integer not null default 0,
  reserved_tokens bigint not null default 0,
  reserved_cost_usd numeric(16, 6) not null default 0,
  updated_at timestamptz not null default now(),
  primary key (user_id, day)
) with (fillfactor = 70);
comment on table public.user_usage_daily is
  'Rollup per user and UTC day, kept in step by admit (reservations), settle and expire_reservations in their own transactions. Admission reads the user''s token quotas and monthly cost cap from it; public.my_usage shows it to the user. Users read their own rows.';
comment on column public.user_usage_daily.user_id is 'The user.';
comment on column public.user_usage_daily.day is 'UTC day of the requests (their admission time).';
comment on column public.user_usage_daily.calls is 'Settled (or expired) calls.';
comment on column public.user_usage_daily.input_tokens is 'Input tokens of those calls.';
comment on column public.user_usage_daily.output_tokens is 'Output tokens of those calls.';
comment on column public.user_usage_daily.cost_usd is 'Cost of those calls, USD.';
comment on column public.user_usage_daily.cache_hits is 'Calls served from the response cache.';
comment on column public.user_usage_daily.errors is 'Calls that ended in error or timeout.';
comment on column public.user_usage_daily.reserved_tokens is 'Estimated tokens of this day''s requests still in flight.';
comment on column public.user_usage_daily.reserved_cost_usd is 'Estimated cost of this day''s requests still in flight, USD.';
comment on column public.user_usage_daily.updated_at is 'Last change.';

-- public.cost_by_user filters by month: read one month's rows, not everyone's history.
-- (Rows are updated in place with the day unchanged, so the index costs one entry per
-- user and day.)
create index user_usage_daily_month_idx on public.user_usage_daily ((date_trunc('month', day::timestamp)::date));

-- ----------------------------------------------------------------------------
-- tollgate.usage_daily: per UTC day, provider, model and feature (the cost views)
-- ----------------------------------------------------------------------------
-- Every settlement of a key adds to its row, so one row per key would be a lock that
-- all concurrent settlements of that model wait for. The key therefore includes a
-- shard (the database session's, pg_backend_pid() % 16): concurrent settlements land
-- on different rows. prune_api_usage() folds past days into shard 0, so history stays
-- one row per key and day. fillfactor leaves room for HOT updates.
create table tollgate.usage_daily (
  day date not null,
  provider text not null,
  model text not null,
  feature text not null,
  shard smallint not null default 0 check (shard between 0 and 15),
  calls bigint not null default 0,
  input_tokens bigint not null default 0,
  output_tokens bigint not null default 0,
  cached_input_tokens bigint not null default 0,
  cache_write_tokens bigint not null default 0,
  reasoning_tokens bigint not null default 0,
  cost_usd numeric(18, 6) not null default 0,
  saved_cost_usd numeric(18, 6) not null default 0,
  latency_ms_sum bigint not null default 0,
  cache_hits bigint not null default 0,
  success_calls bigint not null default 0,
  error_calls bigint not null default 0,
  timeout_calls bigint not null default 0,
  client_closed_calls bigint not null default 0,
  expired_calls bigint not null default 0,
  fallback_calls bigint not null default 0,
  unpriced_calls bigint not null default 0,
  updated_at timestamptz not null default now(),
  primary key (day, provider, model, feature, shard)
) with (fillfactor = 70);
comment on table tollgate.usage_daily is
  'Rollup of ai_api_calls per UTC day (of created_at), provider, model, feature (and contention shard), updated in the same transaction as each ai_api_calls row. Summed over shards, every column equals an aggregate over ai_api_calls (a pgTAP test proves it), so the cost views read this instead of scanning the log.';
comment on column tollgate.usage_daily.day is 'UTC day of the calls (created_at).';
comment on column tollgate.usage_daily.provider is 'Provider.';
comment on column tollgate.usage_daily.model is 'Model.';
comment on column tollgate.usage_daily.feature is 'Feature.';
comment on column tollgate.usage_daily.shard is 'Contention shard (0..15) of the session that wrote the row; past days are folded into 0.';
comment on column tollgate.usage_daily.calls is 'count(*).';
comment on column tollgate.usage_daily.input_tokens is 'sum(input_tokens).';
comment on column tollgate.usage_daily.output_tokens is 'sum(output_tokens).';
comment on column tollgate.usage_daily.cached_input_tokens is 'sum(cached_input_tokens).';
comment on column tollgate.usage_daily.cache_write_tokens is 'sum(cache_write_tokens).';
comment on column tollgate.usage_daily.reasoning_tokens is 'sum(reasoning_tokens).';
comment on column tollgate.usage_daily.cost_usd is 'sum(estimated_cost), USD.';
comment on column tollgate.usage_daily.saved_cost_usd is 'sum(saved_cost), USD saved by cache hits.';
comment on column tollgate.usage_daily.latency_ms_sum is 'sum(latency_ms) (average = latency_ms_sum / calls).';
comment on column tollgate.usage_daily.cache_hits is 'count(*) filter (where cached).';
comment on column tollgate.usage_daily.success_calls is 'count(*) filter (where status = ''success'').';
comment on column tollgate.usage_daily.error_calls is 'count(*) filter (where status = ''error'').';
comment on column tollgate.usage_daily.timeout_calls is 'count(*) filter (where status = ''timeout'').';
comment on column tollgate.usage_daily.client_closed_calls is 'count(*) filter (where status = ''client_closed'').';
comment on column tollgate.usage_daily.expired_calls is 'count(*) filter (where status = ''expired'').';
comment on column tollgate.usage_daily.fallback_calls is 'count(*) filter (where fallback_from is not null).';
comment on column tollgate.usage_daily.unpriced_calls is 'count(*) filter (where not priced).';
comment on column tollgate.usage_daily.updated_at is 'Last change.';

-- ----------------------------------------------------------------------------
-- tollgate.rejections: refused requests (no ai_api_calls row, no api_usage row)
-- ----------------------------------------------------------------------------
-- Insert-only: a bot flood appends rows (no shared row to lock, unlike a counter);
-- pruned after 30 days by prune_api_usage(). Deliberately no foreign key to
-- auth.users: a rejection must stay as cheap as possible and may name no user.
create table tollgate.rejections (
  id bigint generated always as identity primary key,
  created_at timestamptz not null default now(),
  request_id uuid,
  user_id uuid,
  tier text,
  feature text,
  model text,
  layer text not null,
  code text not null
);
create index rejections_created_brin on tollgate.rejections using brin (created_at);
comment on table tollgate.rejections is
  'Insert-only log of requests admit() refused or shed (dry runs excepted; a request waiting in the provider queue is not logged until it is refused): which layer said no and why. Read through public.rejections_by_layer; pruned after 30 days.';
comment on column tollgate.rejections.id is 'Row id.';
comment on column tollgate.rejections.created_at is 'When the request was refused.';
comment on column tollgate.rejections.request_id is 'The request id, when it was a valid UUID.';
comment on column tollgate.rejections.user_id is 'The user, when the request named a valid one.';
comment on column tollgate.rejections.tier is 'The user''s tier, when known.';
comment on column tollgate.rejections.feature is 'The feature requested.';
comment on column tollgate.rejections.model is 'The model requested.';
comment on column tollgate.rejections.layer is 'Layer that refused: request, feature, anomaly, budget, throttle, user_window, user_cost_cap, upstream.';
comment on column tollgate.rejections.code is 'Stable code: invalid_request, unknown_feature, model_not_allowed, feature_paused, budget_exceeded, throttled, rate_limited, cost_cap_exceeded, load_shed, queue_timeout; downgraded (admitted on the cheaper model by load shedding).';

-- ----------------------------------------------------------------------------
-- Row level security and privileges
-- ----------------------------------------------------------------------------
alter table public.api_usage enable row level security;
alter table public.ai_api_calls enable row level security;
alter table public.user_usage_daily enable row level security;
alter table tollgate.usage_daily enable row level security;
alter table tollgate.rejections enable row level security;

-- Supabase's default privileges grant everything in public to the API roles: take it
-- back, then grant exactly what clients need (read, through the policies below).
revoke all on public.api_usage, public.ai_api_calls, public.user_usage_daily
  from public, anon, authenticated, service_role;
grant select on public.api_usage, public.ai_api_calls, public.user_usage_daily to authenticated, service_role;
revoke all on tollgate.usage_daily, tollgate.rejections from public, anon, authenticated;
grant select on tollgate.usage_daily, tollgate.rejections to service_role;

-- A signed-in user reads their own rows. `(select auth.uid())` is evaluated once per
-- statement (an initPlan), not once per row: Supabase's RLS performance advice.
create policy "Users read their own request log" on public.api_usage
  for select to authenticated
  using ((select auth.uid()) = user_id);
create policy "Users read their own calls" on public.ai_api_calls
  for select to authenticated
  using ((select auth.uid()) = user_id);
create policy "Users read their own daily usage" on public.user_usage_daily
  for select to authenticated
  using ((select auth.uid()) = user_id);

-- ----------------------------------------------------------------------------
-- Every tollgate table: no client access, said outright
-- ----------------------------------------------------------------------------
-- RLS is on and clients cannot even use the schema. One restrictive policy per table
-- says so in the table itself: it keeps every row hidden from anon and authenticated
-- even if someone grants the schema by mistake, and tells Supabase's Security Advisor
-- (lint 0008, RLS enabled without a policy) that the table is closed on purpose.
do $$
declare
  v_table regclass;
begin
  for v_table in
    select c.oid::regclass from pg_class as c
    where c.relnamespace = 'tollgate'::regnamespace and c.relkind = 'r'
    order by c.relname
  loop
    execute format(
      'create policy "No client access" on %s as restrictive for all to anon, authenticated using (false) with check (false)',
      v_table);
  end loop;
end;
$$;
