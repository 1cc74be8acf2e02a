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
-- input, with a hint; P0002 (no_data_found) for a request_id with no reservation
-- (an abandoned one included).
--
-- A request the function refused because its admission got no answer is never
-- settled: it is abandoned (tollgate.abandon, at the end of this migration).
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
-- tollgate.settle_call_problem(call jsonb): what is wrong with a call, or null
-- ----------------------------------------------------------------------------
-- One expression checks every key's JSON type and range; then jsonb_populate_record
-- converts them. A missing optional key takes its default; a present key of the wrong
-- type is a problem.
create function tollgate.settle_call_problem(call jsonb)
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
  return case
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
end;
$$;
comment on function tollgate.settle_call_problem(jsonb) is
  'Internal: what is wrong with a settle() call (a sentence for the error message), or null when it is valid.';
revoke all on function tollgate.settle_call_problem(jsonb) from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- tollgate.record_late_call(call, provider_key, at): a call no reservation waits for
-- ----------------------------------------------------------------------------
-- record_calls() settles the calls whose reservation is still `reserved` together;
-- each other call comes here, one at a time. It is the same request id again (a
-- no-op), a call whose reservation the expiry job charged at its estimate (its row is
-- corrected to the call: a late settlement), or a mistake, which raises: another
-- user's or feature's reservation, or none at all. The call is valid
-- (settle_call_problem). Returns the answer, the call row written (null for a
-- duplicate) and the rollup deltas: the estimate taken back, the call added.
create function tollgate.record_late_call(
  call tollgate.settle_call,
  provider_key text,
  at timestamptz,
  out answer jsonb,
  out recorded public.ai_api_calls,
  out deltas tollgate.usage_delta[]
)
language plpgsql
volatile
set search_path = ''
as $$
declare
  v_usage public.api_usage;
  v_old public.ai_api_calls;
  v_budget_ids bigint[];
begin
  answer := jsonb_build_object('settled', false, 'duplicate', true, 'late', false,
    'request_id', call.request_id, 'status', null, 'cost_usd', null);
  deltas := '{}';

  select u.* into v_usage from public.api_usage as u where u.request_id = call.request_id for update;
  if found then
    if v_usage.user_id <> call.user_id then
      raise exception 'tollgate.settle: request % was reserved for another user', call.request_id
        using errcode = '22023', hint = 'Settle with the user_id the request was admitted for.';
    end if;
    if v_usage.status = 'settled' then
      return;
    end if;
    if call.feature is not null and call.feature <> v_usage.feature then
      raise exception 'tollgate.settle: request % was admitted for feature "%", not "%"',
          call.request_id, v_usage.feature, call.feature
        using errcode = '22023', hint = 'Omit feature or pass the admitted one.';
    end if;
    assert v_usage.status = 'expired', 'record_calls() settles a reservation still reserved itself';
    select c.* into v_old from public.ai_api_calls as c where c.request_id = call.request_id for update;
    if not found then
      raise exception 'tollgate.settle: expired reservation % has no call row', call.request_id
        using errcode = 'P0002', hint = 'Inconsistent state: report it.';
    end if;
    v_budget_ids := v_usage.budget_ids;
  else
    -- No reservation row: settled or expired long ago and pruned, or never made.
    select c.* into v_old from public.ai_api_calls as c where c.request_id = call.request_id for update;
    if not found then
      raise exception 'tollgate.settle: no reservation for request %', call.request_id
        using errcode = 'P0002',
          hint = 'settle() completes what admit() reserved: admit the request first, with the same request_id.';
    end if;
    if v_old.user_id is distinct from call.user_id then
      raise exception 'tollgate.settle: request % was reserved for another user', call.request_id
        using errcode = '22023', hint = 'Settle with the user_id the request was admitted for.';
    end if;
    if v_old.status <> 'expired' then
      return;
    end if;
    -- The reservation and its list of budgets are gone: use the budgets that apply now.
    select coalesce(array_agg(b.id order by b.id), '{}') into v_budget_ids
    from tollgate.budgets as b
    where b.scope = 'global' or b.feature = v_old.feature;
  end if;

  update public.ai_api_calls as c
  set provider = call.provider, model = call.model, input_tokens = call.input_tokens,
      output_tokens = call.output_tokens, latency_ms = call.latency_ms, estimated_cost = call.cost_usd,
      cached = coalesce(call.cached, false), status = call.status,
      cached_input_tokens = coalesce(call.cached_input_tokens, 0),
      cache_write_tokens = coalesce(call.cache_write_tokens, 0), reasoning_tokens = coalesce(call.reasoning_tokens, 0),
      attempts = coalesce(call.attempts, 1), fallback_from = call.fallback_from, error_code = call.error_code,
      priced = coalesce(call.priced, true), saved_cost = coalesce(call.saved_cost_usd, 0), endpoint = call.endpoint,
      streamed = coalesce(call.streamed, false), provider_key = record_late_call.provider_key, settled_at = at
  where c.id = v_old.id
  returning c.* into recorded;

  if v_usage.request_id is not null then
    update public.api_usage as u
    set status = 'settled',
        tokens_used = call.input_tokens + call.output_tokens,
        estimated_cost = call.cost_usd,
        provider = call.provider,
        model = call.model,
        settled_at = at
    where u.request_id = call.request_id;
  end if;

  -- Take the expired estimate back and add the actual call: rollups move by the difference.
  deltas := array[
    tollgate.usage_delta_of(v_old, -1, v_budget_ids, 0, 0),
    tollgate.usage_delta_of(recorded, 1, v_budget_ids, 0, 0)];
  answer := jsonb_build_object('settled', true, 'duplicate', false, 'late', true, 'request_id', call.request_id,
    'status', call.status, 'cost_usd', call.cost_usd);
end;
$$;
comment on function tollgate.record_late_call(tollgate.settle_call, text, timestamptz) is
  'Internal to record_calls(): a call whose reservation is not waiting for it — a duplicate (no-op), a late settlement (corrects the expired row) or a mistake (raises).';
revoke all on function tollgate.record_late_call(tollgate.settle_call, text, timestamptz)
  from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- tollgate.record_calls(calls jsonb): settlement but the rollups, for 1..32 calls
-- ----------------------------------------------------------------------------
-- settle() passes one call, settle_many() (the batches migration) up to 32. Written
-- as admit() is, for few statements (each one costs its executor set-up in every
-- transaction: see the note there), and set-based, so that a batch costs about what
-- one call costs: one statement checks and locks the reservations, one settles every
-- call whose reservation waits for it (its call row, the reservation completed, the
-- rollup delta). Only what is rare goes call by call: late and repeated calls
-- (record_late_call), and circuit breakers or provider keys with something to record.
--
-- Lock order, as in admit() and the expiry job: api_usage rows (in request id
-- order), ai_api_calls rows, the response cache, provider_health rows, provider_keys
-- rows, provider_key_usage_daily rows; the caller then writes the rollups.
--
-- Returns each call's answer (in the order of the calls: see settle()) and the rollup
-- deltas of every call row written.
create function tollgate.record_calls(calls jsonb, out answers jsonb[], out deltas tollgate.usage_delta[])
language plpgsql
volatile
-- Each statement's plan is made once per session. PostgreSQL would otherwise plan the
-- two wide statements below again for every call, as it estimates a plan made for its
-- arrays' contents cheaper than one for any arrays, and planning them costs more than
-- running them.
set plan_cache_mode = force_generic_plan
-- And a plan kept for the session must not scan a whole table: made while api_usage
-- was a few pages (a new deployment, the first minute of a benchmark), the update by
-- tuple ids below was a sequential scan, kept while the table grew until autovacuum
-- next analyzed it (a minute later), every settlement reading every reservation.
-- Nothing here is read better by a scan: each row is found by its key or tuple id.
-- (A scan there is no way around, of a one-row settings table, is then costed as
-- disabled, which would have PostgreSQL compile the statement's plan to machine code
-- at every call: JIT is off here.)
set enable_seqscan = off
set jit = off
set search_path = ''
as $$
declare
  v_now timestamptz := clock_timestamp();
  v_problem text;
  v_request_ids uuid[] := '{}'::uuid[];
  v_waiting_rows tid[];
  -- Positions (1-based) in calls.
  v_waiting bigint[];
  v_others bigint[];
  v_recorded bigint[];
  v_breakers bigint[];
  v_key_records bigint[];
  -- Per position: the key of the attempt that answered (or was made last).
  v_provider_keys text[];
  v_rows public.ai_api_calls[];
  v_late record;
  v_position bigint;
begin
  ---------------------------------------------------------------- the input
  -- Every call is checked before anything is written.
  for v_i in 0 .. jsonb_array_length(calls) - 1 loop
    v_problem := tollgate.settle_call_problem(calls -> v_i);
    if v_problem is not null then
      raise exception 'tollgate.settle: %', v_problem
        using errcode = '22023',
          hint = 'Pass the usage the provider reported; see the comment on tollgate.settle for every key.';
    end if;
    v_request_ids := v_request_ids || (calls -> v_i ->> 'request_id')::uuid;
  end loop;

  ---------------------------------------------------------------- the reservations (locks them)
  -- A call's reservation waits for it when it is still `reserved`, for the call's user
  -- and feature, and the call is the first of its request id here; the others go to
  -- record_late_call. Read here as well, since it reads no row this settlement writes:
  -- the calls whose attempts failed or touched a breaker not closed (record_attempts),
  -- and those whose attempts tell something of a provider key (record_upstream: a
  -- refused key, rate-limit headers that are low or clear a low record). Usually
  -- neither.
  --
  -- The reservations are looked up one id at a time (a lateral index scan, whatever
  -- the table's statistics say: a join to the calls could be planned as a scan of the
  -- whole table, and a plan is kept for the session), and the statement below updates
  -- them by their tuple ids (a row locked here cannot move), without a second lookup.
  with reservations as (
    select u.*
    from (select distinct id from unnest(v_request_ids) as id order by id) as ids
    cross join lateral (
      select u.ctid, u.request_id, u.user_id, u.feature, u.status
      from public.api_usage as u
      where u.request_id = ids.id
      for update
    ) as u
  )
  select
    array_agg(k.ordinality order by k.ordinality) filter (where k.waited_for),
    array_agg(k.reservation order by k.ordinality) filter (where k.waited_for),
    array_agg(k.ordinality order by k.ordinality) filter (where not k.waited_for),
    array_agg(k.provider_key order by k.ordinality),
    array_agg(k.ordinality order by k.ordinality) filter (where k.breakers),
    array_agg(k.ordinality order by k.ordinality) filter (where k.keys)
  into v_waiting, v_waiting_rows, v_others, v_provider_keys, v_breakers, v_key_records
  from (
    select k.ordinality, r.ctid as reservation,
      coalesce(r.status = 'reserved' and r.user_id = k.user_id and coalesce(k.feature = r.feature, true)
        and array_position(v_request_ids, k.request_id) = k.ordinality, false) as waited_for,
      (jsonb_path_query_array(k.attempts_detail, '$[*] ? (@.provider == $provider)',
        jsonb_build_object('provider', k.provider)) -> -1) ->> 'key' as provider_key,
      jsonb_path_exists(k.attempts_detail, '$[*] ? (@.ok == false)')
        or exists (
          select from tollgate.provider_health as h
          join jsonb_array_elements(k.attempts_detail) as a
            on h.provider = a.value ->> 'provider' and h.model = a.value ->> 'model'
          where h.state <> 'closed' or h.consecutive_failures > 0) as breakers,
      -- record_upstream's `low`, tested here in jsonpath.
      jsonb_path_exists(k.attempts_detail,
          '$[*] ? (@.key.type() == "string" && (@.status == 401 || @.status == 403
            || @.ratelimit.remaining_requests * 100 <= @.ratelimit.limit_requests * $low
            || @.ratelimit.remaining_tokens * 100 <= @.ratelimit.limit_tokens * $low
            || @.ratelimit.remaining_requests == 0 || @.ratelimit.remaining_tokens == 0))',
          jsonb_build_object('low', (select s.low_headroom_percent from tollgate.upstream_settings as s)), true)
        or exists (
          select from tollgate.provider_keys as pk
          join jsonb_array_elements(k.attempts_detail) as a
            on pk.provider = a.value ->> 'provider' and pk.label = a.value ->> 'key'
          where pk.observed_at is not null) as keys
    from jsonb_populate_recordset(null::tollgate.settle_call, calls) with ordinality as k
    left join reservations as r on r.request_id = k.request_id
  ) as k;

  ---------------------------------------------------------------- the calls reservations wait for, together
  -- Each reservation completed, its call row written, and that row's rollup delta (the
  -- reservation's estimate released). The answers are in the calls' order.
  with completed as (
    update public.api_usage as u
    set status = 'settled',
        tokens_used = w.input_tokens + w.output_tokens,
        estimated_cost = w.cost_usd,
        provider = w.provider,
        model = w.model,
        settled_at = v_now
    from jsonb_populate_recordset(null::tollgate.settle_call, calls) with ordinality as w
    where u.ctid = any (v_waiting_rows) and w.ordinality = any (v_waiting) and u.request_id = w.request_id
    returning w.*, u.created_at, u.feature as reserved_feature, u.budget_ids,
      u.estimated_input_tokens + u.max_output_tokens as reserved_tokens, u.reserved_cost
  ),
  inserted as (
    insert into public.ai_api_calls as c (
      created_at, user_id, feature, provider, model, input_tokens, output_tokens, latency_ms,
      estimated_cost, cached, status, request_id, cached_input_tokens, cache_write_tokens,
      reasoning_tokens, attempts, fallback_from, error_code, priced, saved_cost, endpoint, streamed, provider_key,
      settled_at)
    select w.created_at, w.user_id, w.reserved_feature, w.provider, w.model, w.input_tokens, w.output_tokens,
      w.latency_ms, w.cost_usd, coalesce(w.cached, false), w.status, w.request_id, coalesce(w.cached_input_tokens, 0),
      coalesce(w.cache_write_tokens, 0), coalesce(w.reasoning_tokens, 0), coalesce(w.attempts, 1), w.fallback_from,
      w.error_code, coalesce(w.priced, true), coalesce(w.saved_cost_usd, 0), w.endpoint, coalesce(w.streamed, false),
      v_provider_keys[w.ordinality], v_now
    from completed as w
    returning c.*
  )
  select
    coalesce(array_agg(jsonb_build_object('settled', true, 'duplicate', false, 'late', false,
      'request_id', w.request_id, 'status', w.status, 'cost_usd', w.cost_usd) order by w.ordinality), '{}'),
    coalesce(array_agg(row(i.*)::public.ai_api_calls order by w.ordinality), '{}'),
    coalesce(array_agg(tollgate.usage_delta_of(row(i.*)::public.ai_api_calls, 1, w.budget_ids, w.reserved_tokens,
      w.reserved_cost) order by w.ordinality), '{}')
  into answers, v_rows, deltas
  from inserted as i
  join completed as w on w.request_id = i.request_id;
  v_recorded := coalesce(v_waiting, '{}');

  ---------------------------------------------------------------- the others, one at a time
  if v_others is not null then
    -- Every call's answer in its place.
    answers := array(
      select case when p = any (v_waiting) then answers[array_position(v_waiting, p)] end
      from generate_series(1, jsonb_array_length(calls)) as p);
    foreach v_position in array v_others loop
      v_late := tollgate.record_late_call(
        jsonb_populate_record(null::tollgate.settle_call, calls -> (v_position::integer - 1)),
        v_provider_keys[v_position], v_now);
      answers[v_position] := v_late.answer;
      if cardinality(v_late.deltas) > 0 then -- not a duplicate
        v_recorded := v_recorded || v_position;
        v_rows := v_rows || v_late.recorded;
        deltas := deltas || v_late.deltas;
      end if;
    end loop;
  end if;

  ---------------------------------------------------------------- the cache, circuit breakers and keys
  -- A successful call that was not a cache hit stores its cache entry (the last call
  -- of a key here wins, as it would one after the other).
  if jsonb_path_exists(calls, '$[*] ? (@.cache_entry.type() == "object")') then
    insert into tollgate.response_cache as rc (
      cache_key, feature, provider, model, response, cost_usd, created_at, expires_at, stale_until)
    select distinct on (e.key) e.key, r.feature, r.provider, r.model, k.cache_entry -> 'response', r.estimated_cost,
      v_now, e.expires_at, e.expires_at + make_interval(secs => coalesce(f.stale_cache_seconds, 0))
    from jsonb_populate_recordset(null::tollgate.settle_call, calls) with ordinality as k
    join unnest(v_rows) as r on r.request_id = k.request_id
    cross join lateral (
      select k.cache_entry ->> 'key' as key,
        v_now + make_interval(secs => (k.cache_entry ->> 'ttl_seconds')::numeric::integer) as expires_at
    ) as e
    left join tollgate.features as f on f.name = r.feature
    where k.ordinality = any (v_recorded) and k.status = 'success' and not coalesce(k.cached, false)
      and jsonb_typeof(k.cache_entry) = 'object'
    order by e.key, k.ordinality desc
    on conflict (cache_key) do update
      set feature = excluded.feature, provider = excluded.provider, model = excluded.model,
          response = excluded.response, cost_usd = excluded.cost_usd,
          created_at = excluded.created_at, expires_at = excluded.expires_at, stale_until = excluded.stale_until;
  end if;

  foreach v_position in array coalesce(v_breakers, '{}') loop
    if v_position = any (v_recorded) then
      perform tollgate.record_attempts(calls -> (v_position::integer - 1) -> 'attempts_detail', v_now);
    end if;
  end loop;
  foreach v_position in array coalesce(v_key_records, '{}') loop
    if v_position = any (v_recorded) then
      perform tollgate.record_upstream(calls -> (v_position::integer - 1) -> 'attempts_detail', v_now);
    end if;
  end loop;

  -- The keys' daily spend (a late settlement adds it here: expiry never charged a key).
  if array_remove(v_provider_keys, null) <> '{}' then
    insert into tollgate.provider_key_usage_daily as d (
      provider, label, day, shard, calls, input_tokens, output_tokens, cost_usd, updated_at)
    select r.provider, r.provider_key, (r.created_at at time zone 'UTC')::date, pg_backend_pid() % 16, count(*),
      sum(r.input_tokens), sum(r.output_tokens), sum(r.estimated_cost), v_now
    from unnest(v_rows) as r
    where r.provider_key is not null
    group by 1, 2, 3
    order by 1, 2, 3
    on conflict (provider, label, day, shard) do update
      set calls = d.calls + excluded.calls,
          input_tokens = d.input_tokens + excluded.input_tokens,
          output_tokens = d.output_tokens + excluded.output_tokens,
          cost_usd = d.cost_usd + excluded.cost_usd,
          updated_at = excluded.updated_at;
  end if;
end;
$$;
comment on function tollgate.record_calls(jsonb) is
  'Internal to settle() and settle_many(): everything settlement does but the rollups, for 1 to 32 calls — validates them, writes their ai_api_calls rows, completes their reservations, feeds breakers, keys and cache — and returns the answers and the rollup deltas to apply.';
revoke all on function tollgate.record_calls(jsonb) from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- tollgate.settle(call jsonb) returns jsonb
-- ----------------------------------------------------------------------------
-- record_calls() with one call, then its rollups. settle_many() (the batches
-- migration) applies the rollups of a whole batch at once instead, with
-- apply_usage_deltas().
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
  v_recorded := tollgate.record_calls(jsonb_build_array(call));
  v_answer := v_recorded.answers[1];
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

-- ----------------------------------------------------------------------------
-- tollgate.abandon(request_id uuid, user_id uuid) returns text
-- ----------------------------------------------------------------------------
-- The function refuses a call (503) when its admission got no answer: the
-- connection dropped, or the database did not answer in time. That admission may
-- have committed all the same (a reply lost after the commit), or may still commit
-- (a query the client library sent and then gave up on): a reservation for a call
-- never made, which the expiry job would charge at its estimate. So the function
-- then abandons the request id, retrying until the database answers.
--
-- Under the user's admission lock (lock_users), so that it and any admit() of the
-- same request happen one after the other, whichever comes first. Answers:
--   'released'   a reservation still `reserved` was deleted and released as a
--                settlement releases one (the user's and the budgets' reserved
--                amounts, its provider slot), with nothing spent and no
--                ai_api_calls row, for no call was made. It no longer counts in
--                the user's windows.
--   'refused'    there was no reservation.
--   'abandoned'  the request was abandoned before: nothing more is done.
--   'settled', 'expired'  the call went ahead after all: untouched.
-- 'released' and 'refused' record the request id in tollgate.abandoned_requests,
-- which admit() reads, so that an admission of it arriving later is refused as a
-- reuse of the id; and they take its ticket out of the provider queue.
create table tollgate.abandoned_requests (
  request_id uuid primary key,
  user_id uuid not null,
  abandoned_at timestamptz not null default now(),
  released boolean not null
);
comment on table tollgate.abandoned_requests is
  'Request ids the function refused after their admission got no answer (tollgate.abandon). admit() refuses them; kept a day.';
comment on column tollgate.abandoned_requests.request_id is 'The request id (admit()''s request_id), refused from now on.';
comment on column tollgate.abandoned_requests.user_id is 'The user of the request.';
comment on column tollgate.abandoned_requests.abandoned_at is 'When tollgate.abandon() ran.';
comment on column tollgate.abandoned_requests.released is 'Whether a reservation had been made, and was released.';
alter table tollgate.abandoned_requests enable row level security;
create policy "No client access" on tollgate.abandoned_requests as restrictive for all to anon, authenticated
  using (false) with check (false);
revoke all on tollgate.abandoned_requests from public, anon, authenticated;
grant select on tollgate.abandoned_requests to service_role;

create function tollgate.abandon(request_id uuid, user_id uuid)
returns text
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_usage public.api_usage;
begin
  if abandon.request_id is null or abandon.user_id is null then
    raise exception 'tollgate.abandon: request_id and user_id are required' using errcode = '22023';
  end if;
  perform tollgate.lock_users(array[abandon.user_id]);

  select u.* into v_usage from public.api_usage as u where u.request_id = abandon.request_id for update;
  if found and v_usage.user_id <> abandon.user_id then
    raise exception 'tollgate.abandon: request % was reserved for another user', abandon.request_id
      using errcode = '22023', hint = 'Abandon with the user_id the request was admitted for.';
  end if;
  if found and v_usage.status <> 'reserved' then
    return v_usage.status;
  end if;

  insert into tollgate.abandoned_requests (request_id, user_id, released)
  values (abandon.request_id, abandon.user_id, v_usage.request_id is not null)
  on conflict on constraint abandoned_requests_pkey do nothing;
  if not found then
    return 'abandoned';
  end if;
  delete from tollgate.upstream_queue as q where q.request_id = abandon.request_id;
  if v_usage.request_id is null then
    return 'refused';
  end if;

  delete from public.api_usage as u where u.request_id = abandon.request_id;
  -- No call to count (calls through unpriced_calls: 17 zeros), only the reservation to release.
  perform tollgate.apply_usage_deltas(array[row(
    v_usage.user_id, (v_usage.created_at at time zone 'UTC')::date, v_usage.provider, v_usage.model,
    v_usage.feature, v_usage.budget_ids, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    v_usage.estimated_input_tokens + v_usage.max_output_tokens, v_usage.reserved_cost
  )::tollgate.usage_delta]);
  return 'released';
end;
$$;
comment on function tollgate.abandon(uuid, uuid) is
  'Takes back a request the function refused because its admission got no answer: releases the reservation if one was made, and keeps the request id from being admitted later. Idempotent. Called by the ai function as postgres (or service_role); never by clients.';
revoke all on function tollgate.abandon(uuid, uuid) from public, anon, authenticated;
grant execute on function tollgate.abandon(uuid, uuid) to service_role;
