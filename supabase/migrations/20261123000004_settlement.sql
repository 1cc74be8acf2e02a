-- ============================================================================
-- Tollgate 4/6: settlement — tollgate.settle(call jsonb) returns jsonb
--
-- The `ai` function calls this ONCE per admitted request, after the response
-- (inside EdgeRuntime.waitUntil), retrying on connection errors. In one
-- transaction it writes the ai_api_calls row, completes the api_usage
-- reservation, releases the reserved estimate, adds the actual spend, bumps the
-- rollups, updates the circuit breakers and stores a cache entry.
--
-- Who may call it: `postgres` (the function) and `service_role`. Never clients.
--
-- INPUT (one JSON object):
--   request_id           uuid, required: the id admit() reserved under.
--   user_id              uuid, required: must be the reservation's user.
--   feature              text, optional: when given, must be the reservation's.
--   provider, model      text, required: who answered (or was tried last).
--   status               'success' | 'error' | 'timeout' | 'client_closed'.
--   input_tokens         integer 0..10,000,000, required (cached ones included).
--   output_tokens        integer 0..10,000,000, required (reasoning included).
--   cached_input_tokens, cache_write_tokens   integers, default 0, together <= input.
--   reasoning_tokens     integer, default 0, <= output_tokens.
--   latency_ms           integer 0..3,600,000, required.
--   cost_usd             number (or decimal string) 0..1000, required: the call's
--                        cost priced by the function (goes to estimated_cost).
--   priced               boolean, default true: false when no price was known.
--   cached               boolean, default false: served from the response cache.
--   saved_cost_usd       number 0..1000, default 0: a cache hit's saved cost.
--   attempts             integer 0..50, default 1. fallback_from text (provider/model
--                        first tried), error_code text, endpoint text, streamed boolean.
--   attempts_detail      [{provider, model, ok boolean, status int|null, key text|null,
--                        at timestamptz|null, ratelimit {…}|null, retry_after_ms|null}]
--                        in order: ok=false counts a failure against that breaker
--                        (opens at its threshold, or at once when it was half-open);
--                        ok=true closes it. The function decides what a failure is
--                        (5xx, 429, timeouts — not a 400 the client caused). key,
--                        at, ratelimit (the provider's rate-limit headers) and
--                        retry_after_ms feed the provider keys' state (the upstream
--                        migration); the last attempt's key is the call's provider_key.
--   cache_entry          {key text, response jsonb, ttl_seconds int}, optional:
--                        stored for a successful call.
--
-- OUTPUT: {settled boolean, duplicate boolean, late boolean, request_id, status,
--          cost_usd}.
--   * First settle of a reservation: settled true.
--   * The same request_id again: a no-op, {settled: false, duplicate: true}.
--   * A reservation the expiry job already charged at its estimate: the row is
--     corrected to the actual numbers and every rollup by the difference (still one
--     row): settled true, late true.
--
-- ERRORS (nothing is written): SQLSTATE 22023 (invalid_parameter_value) for bad
-- input, with a hint; P0002 (no_data_found) for a request_id with no reservation.
-- ============================================================================

-- ----------------------------------------------------------------------------
-- Rollup deltas: how the expiry job and late corrections keep every rollup in step
-- with ai_api_calls (settle()'s common path writes the same upserts directly)
-- ----------------------------------------------------------------------------
create type tollgate.usage_delta as (
  user_id uuid,
  day date,
  provider text,
  model text,
  feature text,
  budget_ids bigint[],
  calls integer,
  input_tokens bigint,
  output_tokens bigint,
  cached_input_tokens bigint,
  cache_write_tokens bigint,
  reasoning_tokens bigint,
  cost_usd numeric,
  saved_cost_usd numeric,
  latency_ms bigint,
  cache_hits integer,
  success_calls integer,
  error_calls integer,
  timeout_calls integer,
  client_closed_calls integer,
  expired_calls integer,
  fallback_calls integer,
  unpriced_calls integer,
  released_tokens bigint,
  released_cost_usd numeric
);
comment on type tollgate.usage_delta is
  'Internal: what one ai_api_calls row adds to (sign +1) or takes from (sign -1) the rollups, plus the reservation it releases.';

-- The delta of one call row. `released_*` is the reservation the call completes (0 for
-- a correction). PL/pgSQL, as add_to_usage_daily below: every settlement computes one.
create function tollgate.usage_delta_of(
  c public.ai_api_calls,
  sign integer,
  budget_ids bigint[],
  released_tokens bigint,
  released_cost_usd numeric
)
returns tollgate.usage_delta
language plpgsql
immutable
set search_path = ''
as $$
begin
  return row(
    c.user_id,
    (c.created_at at time zone 'UTC')::date,
    c.provider,
    c.model,
    c.feature,
    budget_ids,
    sign,
    sign * c.input_tokens::bigint,
    sign * c.output_tokens::bigint,
    sign * c.cached_input_tokens::bigint,
    sign * c.cache_write_tokens::bigint,
    sign * c.reasoning_tokens::bigint,
    sign * c.estimated_cost,
    sign * c.saved_cost,
    sign * c.latency_ms::bigint,
    sign * (coalesce(c.cached, false))::integer,
    sign * (c.status = 'success')::integer,
    sign * (c.status = 'error')::integer,
    sign * (c.status = 'timeout')::integer,
    sign * (c.status = 'client_closed')::integer,
    sign * (c.status = 'expired')::integer,
    sign * (c.fallback_from is not null)::integer,
    sign * (not c.priced)::integer,
    released_tokens,
    released_cost_usd
  )::tollgate.usage_delta;
end;
$$;
comment on function tollgate.usage_delta_of(public.ai_api_calls, integer, bigint[], bigint, numeric) is
  'Internal: the rollup delta of an ai_api_calls row (sign +1 to add, -1 to take back) and the reservation it releases.';

-- Adds rows to usage_daily: one upsert for every writer of the rollup (settlement,
-- its corrections, the expiry job, the pruning job's folding of shards), so that they
-- cannot disagree on how a column adds up. The rows must have distinct keys (callers
-- aggregate first: one INSERT cannot update a row twice) and are written in key order,
-- the lock order. Returns how many rows were inserted or updated.
--
-- PL/pgSQL rather than SQL, here and in add_to_user_usage_daily: a SQL function with a
-- SET clause is never inlined and is planned again on every call, while PL/pgSQL keeps
-- its plan for the session — this runs in every settlement.
create function tollgate.add_to_usage_daily(additions tollgate.usage_daily[])
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_written integer;
begin
  insert into tollgate.usage_daily as t
  select a.* from unnest(additions) as a
  order by a.day, a.provider, a.model, a.feature, a.shard
  on conflict (day, provider, model, feature, shard) do update
    set calls = t.calls + excluded.calls,
        input_tokens = t.input_tokens + excluded.input_tokens,
        output_tokens = t.output_tokens + excluded.output_tokens,
        cached_input_tokens = t.cached_input_tokens + excluded.cached_input_tokens,
        cache_write_tokens = t.cache_write_tokens + excluded.cache_write_tokens,
        reasoning_tokens = t.reasoning_tokens + excluded.reasoning_tokens,
        cost_usd = t.cost_usd + excluded.cost_usd,
        saved_cost_usd = t.saved_cost_usd + excluded.saved_cost_usd,
        latency_ms_sum = t.latency_ms_sum + excluded.latency_ms_sum,
        cache_hits = t.cache_hits + excluded.cache_hits,
        success_calls = t.success_calls + excluded.success_calls,
        error_calls = t.error_calls + excluded.error_calls,
        timeout_calls = t.timeout_calls + excluded.timeout_calls,
        client_closed_calls = t.client_closed_calls + excluded.client_closed_calls,
        expired_calls = t.expired_calls + excluded.expired_calls,
        fallback_calls = t.fallback_calls + excluded.fallback_calls,
        unpriced_calls = t.unpriced_calls + excluded.unpriced_calls,
        updated_at = excluded.updated_at;
  get diagnostics v_written = row_count;
  return v_written;
end;
$$;
comment on function tollgate.add_to_usage_daily(tollgate.usage_daily[]) is
  'Internal: adds distinct-keyed rows to tollgate.usage_daily (the one upsert of that rollup).';
revoke all on function tollgate.add_to_usage_daily(tollgate.usage_daily[]) from public, anon, authenticated;

-- Adds rows to public.user_usage_daily, as add_to_usage_daily does for usage_daily:
-- distinct keys, written in key order (the lock order).
create function tollgate.add_to_user_usage_daily(additions public.user_usage_daily[])
returns void
language plpgsql
set search_path = ''
as $$
begin
  insert into public.user_usage_daily as t
  select a.* from unnest(additions) as a
  order by a.user_id, a.day
  on conflict (user_id, day) do update
    set calls = t.calls + excluded.calls,
        input_tokens = t.input_tokens + excluded.input_tokens,
        output_tokens = t.output_tokens + excluded.output_tokens,
        cost_usd = t.cost_usd + excluded.cost_usd,
        cache_hits = t.cache_hits + excluded.cache_hits,
        errors = t.errors + excluded.errors,
        reserved_tokens = t.reserved_tokens + excluded.reserved_tokens,
        reserved_cost_usd = t.reserved_cost_usd + excluded.reserved_cost_usd,
        updated_at = excluded.updated_at;
end;
$$;
comment on function tollgate.add_to_user_usage_daily(public.user_usage_daily[]) is
  'Internal: adds distinct-keyed rows to public.user_usage_daily (the one upsert of settlement''s user rollup).';
revoke all on function tollgate.add_to_user_usage_daily(public.user_usage_daily[]) from public, anon, authenticated;

-- Applies deltas to the three rollups, in the global lock order: user rows, then
-- usage_daily rows, then budget_settlements rows, each set in key order (INSERT …
-- SELECT … ORDER BY locks rows in that order), so concurrent settlements and expiry
-- runs cannot deadlock. Upserts: a row that does not exist yet is created. Shared
-- rollups go to the shard of this database session (see usage_daily).
create function tollgate.apply_usage_deltas(deltas tollgate.usage_delta[])
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform tollgate.add_to_user_usage_daily(array(
    select row(
      d.user_id, d.day, sum(d.calls), sum(d.input_tokens), sum(d.output_tokens), sum(d.cost_usd), sum(d.cache_hits),
      sum(d.error_calls + d.timeout_calls), -sum(d.released_tokens), -sum(d.released_cost_usd), now()
    )::public.user_usage_daily
    from unnest(deltas) as d
    where d.user_id is not null
    group by d.user_id, d.day));

  perform tollgate.add_to_usage_daily(array(
    select row(
      d.day, d.provider, d.model, d.feature, pg_backend_pid() % 16, sum(d.calls), sum(d.input_tokens),
      sum(d.output_tokens), sum(d.cached_input_tokens), sum(d.cache_write_tokens), sum(d.reasoning_tokens),
      sum(d.cost_usd), sum(d.saved_cost_usd), sum(d.latency_ms), sum(d.cache_hits), sum(d.success_calls),
      sum(d.error_calls), sum(d.timeout_calls), sum(d.client_closed_calls), sum(d.expired_calls),
      sum(d.fallback_calls), sum(d.unpriced_calls), now())::tollgate.usage_daily
    from unnest(deltas) as d
    group by d.day, d.provider, d.model, d.feature));

  -- Budgets deleted since the reservation are skipped (their counters went with them).
  insert into tollgate.budget_settlements as t (
    budget_id, period_start, shard, spent_usd, released_usd, calls, updated_at)
  select b.id, date_trunc('month', d.day::timestamp)::date, pg_backend_pid() % 16, sum(d.cost_usd),
    sum(d.released_cost_usd), sum(d.calls), now()
  from unnest(deltas) as d
  cross join lateral unnest(d.budget_ids) as reserved_on (budget_id)
  join tollgate.budgets as b on b.id = reserved_on.budget_id
  group by b.id, date_trunc('month', d.day::timestamp)::date
  order by b.id, date_trunc('month', d.day::timestamp)::date
  on conflict (budget_id, period_start, shard) do update
    set spent_usd = t.spent_usd + excluded.spent_usd,
        released_usd = t.released_usd + excluded.released_usd,
        calls = t.calls + excluded.calls,
        updated_at = excluded.updated_at;
end;
$$;
comment on function tollgate.apply_usage_deltas(tollgate.usage_delta[]) is
  'Internal: adds call deltas to user_usage_daily, usage_daily and budget_settlements in one deadlock-free order. Called by settle() and expire_reservations().';

revoke all on function tollgate.usage_delta_of(public.ai_api_calls, integer, bigint[], bigint, numeric),
  tollgate.apply_usage_deltas(tollgate.usage_delta[])
  from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- Circuit breakers: what one settled request's attempts say about its providers
-- ----------------------------------------------------------------------------
-- settle() validates attempts_detail and calls this when an attempt failed or a
-- breaker it touched is not closed (the common case, all ok on closed breakers,
-- writes nothing). Breakers are visited in (provider, model) order — the order admit()
-- grants probes in — so two settlements cannot deadlock on them; each breaker sees its
-- own attempts in the order they were made.
create function tollgate.record_attempts(attempts jsonb, at timestamptz)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_breaker record;
  v_attempt jsonb;
  v_rate_limited boolean;
begin
  for v_breaker in
    select a.value ->> 'provider' as provider, a.value ->> 'model' as model,
      jsonb_agg(a.value order by a.ordinality) as attempts
    from jsonb_array_elements(attempts) with ordinality as a
    group by 1, 2
    order by 1, 2
  loop
    for v_attempt in select e.value from jsonb_array_elements(v_breaker.attempts) as e loop
      if (v_attempt ->> 'ok')::boolean then
        update tollgate.provider_health as h
        set state = 'closed',
            consecutive_failures = 0,
            consecutive_429s = 0,
            opened_at = null,
            probe_request_id = null,
            probe_started_at = null,
            last_success_at = at,
            updated_at = at
        where h.provider = v_breaker.provider and h.model = v_breaker.model
          and (h.state <> 'closed' or h.consecutive_failures > 0);
      else
        v_rate_limited := coalesce((v_attempt ->> 'status')::numeric = 429, false);
        -- A failure: count it; open at the threshold, or at once when the breaker was
        -- half-open (the probe failed: back to a full cooldown).
        insert into tollgate.provider_health as h (
          provider, model, state, consecutive_failures, consecutive_429s, last_status, last_failure_at, updated_at)
        values (v_breaker.provider, v_breaker.model, 'closed', 1, v_rate_limited::integer,
          (v_attempt ->> 'status')::numeric::integer, at, at)
        on conflict (provider, model) do update
          set consecutive_failures = h.consecutive_failures + 1,
              consecutive_429s = case when v_rate_limited then h.consecutive_429s + 1 else 0 end,
              state = case
                when h.state = 'half_open' or h.consecutive_failures + 1 >= h.failure_threshold then 'open'
                else h.state
              end,
              opened_at = case
                when h.state = 'half_open' or h.consecutive_failures + 1 >= h.failure_threshold then at
                else h.opened_at
              end,
              probe_request_id = case
                when h.state = 'half_open' or h.consecutive_failures + 1 >= h.failure_threshold then null
                else h.probe_request_id
              end,
              probe_started_at = case
                when h.state = 'half_open' or h.consecutive_failures + 1 >= h.failure_threshold then null
                else h.probe_started_at
              end,
              last_status = excluded.last_status,
              last_failure_at = excluded.last_failure_at,
              updated_at = excluded.updated_at;
        -- A new row starts closed with one failure; a threshold of 1 opens it at once.
        update tollgate.provider_health as h
        set state = 'open', opened_at = at
        where h.provider = v_breaker.provider and h.model = v_breaker.model
          and h.state = 'closed' and h.consecutive_failures >= h.failure_threshold;
        -- Seed 003: repeated 429s mean the traffic outgrew the provider's tier (or
        -- someone else uses the key). The breaker already sends traffic to the
        -- fallback; a person hears of it once per streak.
        if v_rate_limited then
          insert into tollgate.budget_alerts (dedup_key, kind, severity, message, details)
          select format('rate_limited:%s:%s:%s', h.provider, h.model, extract(epoch from h.last_failure_at)),
            'provider_rate_limited', 'investigate',
            format('%s answered %s consecutive 429s for %s: its circuit breaker is %s, traffic goes to the route''s fallback. Raise the provider tier, add a key or lower the load.',
              h.provider, h.consecutive_429s, h.model, h.state),
            jsonb_build_object('provider', h.provider, 'model', h.model, 'consecutive_429s', h.consecutive_429s,
              'state', h.state)
          from tollgate.provider_health as h
          cross join tollgate.upstream_settings as s
          where h.provider = v_breaker.provider and h.model = v_breaker.model
            and h.consecutive_429s = s.rate_limit_streak
          on conflict (dedup_key) do nothing;
        end if;
      end if;
    end loop;
  end loop;
end;
$$;
comment on function tollgate.record_attempts(jsonb, timestamptz) is
  'Internal: updates circuit breakers from a settled request''s (validated) attempts_detail, breaker by breaker in (provider, model) order. Called by settle().';
revoke all on function tollgate.record_attempts(jsonb, timestamptz) from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- tollgate.settle
-- ----------------------------------------------------------------------------
-- The parsed input of settle() (numbers as numeric: validated before conversion).
create type tollgate.settle_call as (
  request_id uuid,
  user_id uuid,
  feature text,
  provider text,
  model text,
  status text,
  input_tokens numeric,
  output_tokens numeric,
  cached_input_tokens numeric,
  cache_write_tokens numeric,
  reasoning_tokens numeric,
  latency_ms numeric,
  cost_usd numeric,
  saved_cost_usd numeric,
  priced boolean,
  cached boolean,
  streamed boolean,
  attempts numeric,
  fallback_from text,
  error_code text,
  endpoint text,
  attempts_detail jsonb,
  cache_entry jsonb
);
comment on type tollgate.settle_call is 'Internal: settle()''s input after validation.';

-- ----------------------------------------------------------------------------
-- tollgate.record_call(call jsonb): settlement but the rollups
-- ----------------------------------------------------------------------------
-- Written like admit(): few statements, because each one costs its executor set-up in
-- every transaction (see the note there).
create function tollgate.record_call(call jsonb, out answer jsonb, out deltas tollgate.usage_delta[])
language plpgsql
volatile
set search_path = ''
as $$
declare
  v_now timestamptz := clock_timestamp();
  v_call tollgate.settle_call;
  v_problem text;
  v_input integer;
  v_output integer;
  v_cached_input integer;
  v_cache_write integer;
  v_reasoning integer;
  v_latency integer;
  v_cost numeric;
  v_saved numeric;
  v_priced boolean;
  v_cached boolean;
  v_streamed boolean;
  v_attempts integer;
  v_usage public.api_usage;
  v_old public.ai_api_calls;
  v_new public.ai_api_calls;
  v_budget_ids bigint[];
  v_late boolean := false;
  v_provider_key text;
begin
  ---------------------------------------------------------------- the input
  -- One expression checks every key's JSON type and range; then one call converts
  -- them. A missing optional key takes its default; a present key of the wrong type
  -- is an error.
  v_problem := case
    when call is null or jsonb_typeof(call) <> 'object' then 'the call must be a JSON object'
    when jsonb_typeof(call -> 'request_id') is distinct from 'string'
      or (call ->> 'request_id') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
      then 'request_id must be a UUID'
    when jsonb_typeof(call -> 'user_id') is distinct from 'string'
      or (call ->> 'user_id') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
      then 'user_id must be a UUID (the reservation''s user)'
    when coalesce(jsonb_typeof(call -> 'feature'), 'null') not in ('string', 'null') then 'feature must be text'
    when jsonb_typeof(call -> 'provider') is distinct from 'string' or length(call ->> 'provider') not between 1 and 64
      then 'provider must be a provider id of 1 to 64 characters'
    when jsonb_typeof(call -> 'model') is distinct from 'string' or length(call ->> 'model') not between 1 and 200
      then 'model must be a model name of 1 to 200 characters'
    when jsonb_typeof(call -> 'status') is distinct from 'string'
      or (call ->> 'status') not in ('success', 'error', 'timeout', 'client_closed')
      then 'status must be one of success, error, timeout, client_closed'
    when jsonb_typeof(call -> 'input_tokens') is distinct from 'number'
      or (call -> 'input_tokens')::numeric not between 0 and 10000000 or (call -> 'input_tokens')::numeric % 1 <> 0
      then 'input_tokens must be a whole number from 0 to 10,000,000'
    when jsonb_typeof(call -> 'output_tokens') is distinct from 'number'
      or (call -> 'output_tokens')::numeric not between 0 and 10000000 or (call -> 'output_tokens')::numeric % 1 <> 0
      then 'output_tokens must be a whole number from 0 to 10,000,000'
    when case coalesce(jsonb_typeof(call -> 'cached_input_tokens'), 'null')
        when 'null' then false
        when 'number' then (call -> 'cached_input_tokens')::numeric < 0 or (call -> 'cached_input_tokens')::numeric % 1 <> 0
        else true end
      then 'cached_input_tokens must be a whole number >= 0'
    when case coalesce(jsonb_typeof(call -> 'cache_write_tokens'), 'null')
        when 'null' then false
        when 'number' then (call -> 'cache_write_tokens')::numeric < 0 or (call -> 'cache_write_tokens')::numeric % 1 <> 0
        else true end
      then 'cache_write_tokens must be a whole number >= 0'
    when coalesce(case when jsonb_typeof(call -> 'cached_input_tokens') = 'number'
        then (call -> 'cached_input_tokens')::numeric end, 0)
      + coalesce(case when jsonb_typeof(call -> 'cache_write_tokens') = 'number'
        then (call -> 'cache_write_tokens')::numeric end, 0)
      > (call -> 'input_tokens')::numeric
      then 'cached_input_tokens + cache_write_tokens must not exceed input_tokens (they are part of it)'
    when case coalesce(jsonb_typeof(call -> 'reasoning_tokens'), 'null')
        when 'null' then false
        when 'number' then (call -> 'reasoning_tokens')::numeric not between 0 and (call -> 'output_tokens')::numeric
          or (call -> 'reasoning_tokens')::numeric % 1 <> 0
        else true end
      then 'reasoning_tokens must be a whole number from 0 to output_tokens (they are part of it)'
    when jsonb_typeof(call -> 'latency_ms') is distinct from 'number'
      or (call -> 'latency_ms')::numeric not between 0 and 3600000 or (call -> 'latency_ms')::numeric % 1 <> 0
      then 'latency_ms must be a whole number from 0 to 3,600,000'
    when case jsonb_typeof(call -> 'cost_usd')
        when 'number' then (call -> 'cost_usd')::numeric not between 0 and 1000
        when 'string' then (call ->> 'cost_usd') !~ '^[0-9]{1,4}(\.[0-9]{1,20})?$' or (call ->> 'cost_usd')::numeric > 1000
        else true end
      then 'cost_usd must be a number of US dollars from 0 to 1000'
    when case coalesce(jsonb_typeof(call -> 'saved_cost_usd'), 'null')
        when 'null' then false
        when 'number' then (call -> 'saved_cost_usd')::numeric not between 0 and 1000
        when 'string' then (call ->> 'saved_cost_usd') !~ '^[0-9]{1,4}(\.[0-9]{1,20})?$'
          or (call ->> 'saved_cost_usd')::numeric > 1000
        else true end
      then 'saved_cost_usd must be a number of US dollars from 0 to 1000'
    when coalesce(jsonb_typeof(call -> 'priced'), 'null') not in ('boolean', 'null') then 'priced must be a boolean'
    when coalesce(jsonb_typeof(call -> 'cached'), 'null') not in ('boolean', 'null') then 'cached must be a boolean'
    when coalesce(jsonb_typeof(call -> 'streamed'), 'null') not in ('boolean', 'null') then 'streamed must be a boolean'
    when case coalesce(jsonb_typeof(call -> 'attempts'), 'null')
        when 'null' then false
        when 'number' then (call -> 'attempts')::numeric not between 0 and 50 or (call -> 'attempts')::numeric % 1 <> 0
        else true end
      then 'attempts must be a whole number from 0 to 50'
    when coalesce(jsonb_typeof(call -> 'fallback_from'), 'null') not in ('string', 'null')
      or length(call ->> 'fallback_from') > 300
      then 'fallback_from must be text (provider/model)'
    when coalesce(jsonb_typeof(call -> 'error_code'), 'null') not in ('string', 'null')
      or length(call ->> 'error_code') > 100
      then 'error_code must be text of at most 100 characters'
    when coalesce(jsonb_typeof(call -> 'endpoint'), 'null') not in ('string', 'null')
      or length(call ->> 'endpoint') > 100
      then 'endpoint must be text of at most 100 characters'
    when coalesce(jsonb_typeof(call -> 'attempts_detail'), 'null') not in ('array', 'null')
      or jsonb_array_length(
        case when jsonb_typeof(call -> 'attempts_detail') = 'array' then call -> 'attempts_detail' else '[]' end) > 50
      then 'attempts_detail must be an array of at most 50 attempts'
    when jsonb_typeof(call -> 'attempts_detail') = 'array' and jsonb_path_exists(call -> 'attempts_detail',
        '$[*] ? (@.type() != "object" || !(@.provider.type() == "string") || !(@.model.type() == "string")
          || !(@.ok.type() == "boolean")
          || (exists(@.status) && !(@.status.type() == "null")
            && !(@.status.type() == "number" && @.status >= 0 && @.status <= 999 && @.status == @.status.floor()))
          || (exists(@.key) && !(@.key.type() == "null" || @.key.type() == "string"))
          || (exists(@.at) && !(@.at.type() == "null" || @.at.type() == "string"))
          || (exists(@.ratelimit) && !(@.ratelimit.type() == "null" || @.ratelimit.type() == "object"))
          || (exists(@.retry_after_ms) && !(@.retry_after_ms.type() == "null" || @.retry_after_ms >= 0)))')
      then 'each attempts_detail entry must be {provider: text, model: text, ok: boolean, status: integer 0..999 or null, key: text or null, at: timestamp or null, ratelimit: object or null, retry_after_ms: number or null}'
    when coalesce(jsonb_typeof(call -> 'cache_entry'), 'null') not in ('object', 'null')
      then 'cache_entry must be an object {key, response, ttl_seconds}'
    when jsonb_typeof(call -> 'cache_entry') = 'object' and (
        jsonb_typeof(call #> '{cache_entry,key}') is distinct from 'string'
        or length(call #>> '{cache_entry,key}') not between 1 and 512)
      then 'cache_entry.key must be a string of 1 to 512 characters'
    when jsonb_typeof(call -> 'cache_entry') = 'object'
      and coalesce(jsonb_typeof(call #> '{cache_entry,response}'), 'null') = 'null'
      then 'cache_entry.response is required'
    when jsonb_typeof(call -> 'cache_entry') = 'object' and (
        jsonb_typeof(call #> '{cache_entry,ttl_seconds}') is distinct from 'number'
        or (call #> '{cache_entry,ttl_seconds}')::numeric not between 1 and 2592000
        or (call #> '{cache_entry,ttl_seconds}')::numeric % 1 <> 0)
      then 'cache_entry.ttl_seconds must be a whole number from 1 to 2,592,000'
  end;
  if v_problem is not null then
    raise exception 'tollgate.settle: %', v_problem
      using errcode = '22023',
        hint = 'Pass the usage the provider reported; see the comment on tollgate.settle for every key.';
  end if;
  v_call := jsonb_populate_record(null::tollgate.settle_call, call);
  v_input := v_call.input_tokens;
  v_output := v_call.output_tokens;
  v_cached_input := coalesce(v_call.cached_input_tokens, 0);
  v_cache_write := coalesce(v_call.cache_write_tokens, 0);
  v_reasoning := coalesce(v_call.reasoning_tokens, 0);
  v_latency := v_call.latency_ms;
  v_cost := v_call.cost_usd;
  v_saved := coalesce(v_call.saved_cost_usd, 0);
  v_priced := coalesce(v_call.priced, true);
  v_cached := coalesce(v_call.cached, false);
  v_streamed := coalesce(v_call.streamed, false);
  v_attempts := coalesce(v_call.attempts, 1);

  ---------------------------------------------------------------- find the reservation (locks it)
  select u.* into v_usage from public.api_usage as u where u.request_id = v_call.request_id for update;
  if found then
    if v_usage.user_id <> v_call.user_id then
      raise exception 'tollgate.settle: request % was reserved for another user', v_call.request_id
        using errcode = '22023', hint = 'Settle with the user_id the request was admitted for.';
    end if;
    if v_usage.status = 'settled' then
      answer := jsonb_build_object('settled', false, 'duplicate', true, 'late', false,
        'request_id', v_call.request_id, 'status', null, 'cost_usd', null);
      deltas := '{}';
      return;
    end if;
    if v_call.feature is not null and v_call.feature <> v_usage.feature then
      raise exception 'tollgate.settle: request % was admitted for feature "%", not "%"',
          v_call.request_id, v_usage.feature, v_call.feature
        using errcode = '22023', hint = 'Omit feature or pass the admitted one.';
    end if;
    if v_usage.status = 'expired' then
      v_late := true;
      select c.* into v_old from public.ai_api_calls as c where c.request_id = v_call.request_id for update;
      if not found then
        raise exception 'tollgate.settle: expired reservation % has no call row', v_call.request_id
          using errcode = 'P0002', hint = 'Inconsistent state: report it.';
      end if;
    end if;
    v_budget_ids := v_usage.budget_ids;
  else
    -- No reservation row: settled or expired long ago and pruned, or never made.
    select c.* into v_old from public.ai_api_calls as c where c.request_id = v_call.request_id for update;
    if not found then
      raise exception 'tollgate.settle: no reservation for request %', v_call.request_id
        using errcode = 'P0002',
          hint = 'settle() completes what admit() reserved: admit the request first, with the same request_id.';
    end if;
    if v_old.user_id is distinct from v_call.user_id then
      raise exception 'tollgate.settle: request % was reserved for another user', v_call.request_id
        using errcode = '22023', hint = 'Settle with the user_id the request was admitted for.';
    end if;
    if v_old.status <> 'expired' then
      answer := jsonb_build_object('settled', false, 'duplicate', true, 'late', false,
        'request_id', v_call.request_id, 'status', null, 'cost_usd', null);
      deltas := '{}';
      return;
    end if;
    v_late := true;
    -- The reservation and its list of budgets are gone: use the budgets that apply now.
    select coalesce(array_agg(b.id order by b.id), '{}') into v_budget_ids
    from tollgate.budgets as b
    where b.scope = 'global' or b.feature = v_old.feature;
  end if;

  ---------------------------------------------------------------- the call row, the reservation, the cache
  -- The key of the attempt that answered (or was made last): attempts end there.
  select a.value ->> 'key' into v_provider_key
  from jsonb_array_elements(v_call.attempts_detail) with ordinality as a
  where a.value ->> 'provider' = v_call.provider
  order by a.ordinality desc
  limit 1;

  if not v_late then
    insert into public.ai_api_calls as c (
      created_at, user_id, feature, provider, model, input_tokens, output_tokens, latency_ms,
      estimated_cost, cached, status, request_id, cached_input_tokens, cache_write_tokens,
      reasoning_tokens, attempts, fallback_from, error_code, priced, saved_cost, endpoint, streamed, provider_key,
      settled_at)
    values (
      v_usage.created_at, v_call.user_id, v_usage.feature, v_call.provider, v_call.model, v_input, v_output, v_latency,
      v_cost, v_cached, v_call.status, v_call.request_id, v_cached_input, v_cache_write,
      v_reasoning, v_attempts, v_call.fallback_from, v_call.error_code, v_priced, v_saved, v_call.endpoint,
      v_streamed, v_provider_key, v_now)
    returning c.* into v_new;
  else
    update public.ai_api_calls as c
    set provider = v_call.provider, model = v_call.model, input_tokens = v_input, output_tokens = v_output,
        latency_ms = v_latency, estimated_cost = v_cost, cached = v_cached, status = v_call.status,
        cached_input_tokens = v_cached_input, cache_write_tokens = v_cache_write, reasoning_tokens = v_reasoning,
        attempts = v_attempts, fallback_from = v_call.fallback_from, error_code = v_call.error_code, priced = v_priced,
        saved_cost = v_saved, endpoint = v_call.endpoint, streamed = v_streamed, provider_key = v_provider_key,
        settled_at = v_now
    where c.id = v_old.id
    returning c.* into v_new;
  end if;

  if v_usage.request_id is not null then
    update public.api_usage as u
    set status = 'settled',
        tokens_used = v_input + v_output,
        estimated_cost = v_cost,
        provider = v_call.provider,
        model = v_call.model,
        settled_at = v_now
    where u.request_id = v_call.request_id;
  end if;

  if v_call.status = 'success' and not v_cached and jsonb_typeof(v_call.cache_entry) = 'object' then
    insert into tollgate.response_cache as rc (
      cache_key, feature, provider, model, response, cost_usd, created_at, expires_at, stale_until)
    select e.key, e.feature, v_call.provider, v_call.model, v_call.cache_entry -> 'response', v_cost, v_now,
      e.expires_at, e.expires_at + make_interval(secs => coalesce(f.stale_cache_seconds, 0))
    from (select v_call.cache_entry ->> 'key' as key, coalesce(v_usage.feature, v_old.feature) as feature,
            v_now + make_interval(secs => (v_call.cache_entry ->> 'ttl_seconds')::numeric::integer) as expires_at) as e
    left join tollgate.features as f on f.name = e.feature
    on conflict (cache_key) do update
      set feature = excluded.feature, provider = excluded.provider, model = excluded.model,
          response = excluded.response, cost_usd = excluded.cost_usd,
          created_at = excluded.created_at, expires_at = excluded.expires_at, stale_until = excluded.stale_until;
  end if;

  ---------------------------------------------------------------- circuit breakers and keys (then the rollups: the lock order)
  -- Usually every attempt succeeded on a closed breaker: one read, no write.
  if jsonb_path_exists(v_call.attempts_detail, '$[*] ? (@.ok == false)')
    or exists (
      select from tollgate.provider_health as h
      join jsonb_array_elements(v_call.attempts_detail) as a
        on h.provider = a.value ->> 'provider' and h.model = a.value ->> 'model'
      where h.state <> 'closed' or h.consecutive_failures > 0)
  then
    perform tollgate.record_attempts(v_call.attempts_detail, v_now);
  end if;
  -- Provider keys (the upstream migration): a refused key, or rate-limit headers that
  -- are low (record_upstream's `low`, tested here in jsonpath) or clear a low record.
  -- Usually neither: one read, no write.
  if jsonb_path_exists(v_call.attempts_detail,
      '$[*] ? (@.key.type() == "string" && (@.status == 401 || @.status == 403
        || @.ratelimit.remaining_requests * 100 <= @.ratelimit.limit_requests * $low
        || @.ratelimit.remaining_tokens * 100 <= @.ratelimit.limit_tokens * $low
        || @.ratelimit.remaining_requests == 0 || @.ratelimit.remaining_tokens == 0))',
      jsonb_build_object('low', (select s.low_headroom_percent from tollgate.upstream_settings as s)), true)
    or exists (
      select from tollgate.provider_keys as k
      join jsonb_array_elements(v_call.attempts_detail) as a
        on k.provider = a.value ->> 'provider' and k.label = a.value ->> 'key'
      where k.observed_at is not null)
  then
    perform tollgate.record_upstream(v_call.attempts_detail, v_now);
  end if;

  -- What the call adds to the rollups, applied by the caller (see settle()).
  if v_late then
    -- Take the expired estimate back and add the actual call: rollups move by the difference.
    deltas := array[
      tollgate.usage_delta_of(v_old, -1, v_budget_ids, 0, 0),
      tollgate.usage_delta_of(v_new, 1, v_budget_ids, 0, 0)];
  else
    deltas := array[tollgate.usage_delta_of(v_new, 1, v_budget_ids,
      v_usage.estimated_input_tokens + v_usage.max_output_tokens, v_usage.reserved_cost)];
  end if;

  -- The key's daily spend (a late correction adds it here: expiry never charged a key).
  if v_provider_key is not null then
    insert into tollgate.provider_key_usage_daily as d (
      provider, label, day, shard, calls, input_tokens, output_tokens, cost_usd, updated_at)
    values (v_call.provider, v_provider_key, (v_new.created_at at time zone 'UTC')::date, pg_backend_pid() % 16, 1,
      v_input, v_output, v_cost, v_now)
    on conflict (provider, label, day, shard) do update
      set calls = d.calls + 1,
          input_tokens = d.input_tokens + excluded.input_tokens,
          output_tokens = d.output_tokens + excluded.output_tokens,
          cost_usd = d.cost_usd + excluded.cost_usd,
          updated_at = excluded.updated_at;
  end if;

  answer := jsonb_build_object('settled', true, 'duplicate', false, 'late', v_late, 'request_id', v_call.request_id,
    'status', v_call.status, 'cost_usd', v_cost);
end;
$$;
comment on function tollgate.record_call(jsonb) is
  'Internal to settle() and settle_many(): everything settlement does but the rollups — validates the call, writes the ai_api_calls row, completes the reservation, feeds breakers, keys and cache — and returns the answer and the rollup deltas to apply.';
revoke all on function tollgate.record_call(jsonb) from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- tollgate.settle(call jsonb) returns jsonb
-- ----------------------------------------------------------------------------
-- record_call(), then its rollups. settle_many() (the batches migration) applies the
-- rollups of a whole batch at once instead, with apply_usage_deltas().
create function tollgate.settle(call jsonb)
returns jsonb
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_recorded record;
  v_answer jsonb;
  v_deltas tollgate.usage_delta[];
  v_delta tollgate.usage_delta;
  v_now timestamptz := clock_timestamp();
  v_shard integer := pg_backend_pid() % 16;
begin
  -- An assignment, not a query: PL/pgSQL runs the call without a statement's executor.
  v_recorded := tollgate.record_call(call);
  v_answer := v_recorded.answer;
  v_deltas := v_recorded.deltas;
  if cardinality(v_deltas) = 0 then
    return v_answer; -- a duplicate
  elsif cardinality(v_deltas) > 1 then
    perform tollgate.apply_usage_deltas(v_deltas); -- a late correction
    return v_answer;
  end if;

  -- The common case, one call: the same three upserts as apply_usage_deltas, written
  -- out (a call through the set-based helper costs several times more). A pgTAP test
  -- proves both paths keep the rollups equal to aggregates over ai_api_calls.
  v_delta := v_deltas[1];
  perform tollgate.add_to_user_usage_daily(array[row(
    v_delta.user_id, v_delta.day, 1, v_delta.input_tokens, v_delta.output_tokens, v_delta.cost_usd,
    v_delta.cache_hits, v_delta.error_calls + v_delta.timeout_calls, -v_delta.released_tokens,
    -v_delta.released_cost_usd, v_now
  )::public.user_usage_daily]);

  perform tollgate.add_to_usage_daily(array[row(
    v_delta.day, v_delta.provider, v_delta.model, v_delta.feature, v_shard, 1, v_delta.input_tokens,
    v_delta.output_tokens, v_delta.cached_input_tokens, v_delta.cache_write_tokens, v_delta.reasoning_tokens,
    v_delta.cost_usd, v_delta.saved_cost_usd, v_delta.latency_ms, v_delta.cache_hits, v_delta.success_calls,
    v_delta.error_calls, v_delta.timeout_calls, v_delta.client_closed_calls, 0, v_delta.fallback_calls,
    v_delta.unpriced_calls, v_now)::tollgate.usage_daily]);

  -- Budgets last, in id order (budget_ids is sorted): release the estimate and add
  -- the actual cost, in this session's shard (budgets deleted meanwhile: skipped).
  for v_i in 1 .. cardinality(v_delta.budget_ids) loop
    insert into tollgate.budget_settlements as t (
      budget_id, period_start, shard, spent_usd, released_usd, calls, updated_at)
    select b.id, date_trunc('month', v_delta.day::timestamp)::date, v_shard, v_delta.cost_usd,
      v_delta.released_cost_usd, 1, v_now
    from tollgate.budgets as b
    where b.id = v_delta.budget_ids[v_i]
    on conflict (budget_id, period_start, shard) do update
      set spent_usd = t.spent_usd + excluded.spent_usd,
          released_usd = t.released_usd + excluded.released_usd,
          calls = t.calls + 1,
          updated_at = excluded.updated_at;
  end loop;
  return v_answer;
end;
$$;

comment on function tollgate.settle(jsonb) is
  'Settlement: writes the ai_api_calls row, completes the api_usage reservation, moves the estimate to actual spend in every rollup, updates circuit breakers and the response cache — one transaction, idempotent on request_id, corrects an expired reservation. Called by the ai function as postgres (or service_role); never by clients. Contract in the header of this migration.';

revoke all on function tollgate.settle(jsonb) from public, anon, authenticated;
grant execute on function tollgate.settle(jsonb) to service_role;
