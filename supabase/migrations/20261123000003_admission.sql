-- ============================================================================
-- Tollgate 3/6: admission — tollgate.admit(request jsonb) returns jsonb
--
-- The `ai` function calls this ONCE per request, before calling a provider. In one
-- transaction it decides (every layer below), reserves the estimate, and returns
-- everything the function needs: the decision, the limits for the x-ratelimit-*
-- headers, the restricted-mode caps, the route with circuit-breaker states, the
-- price overrides and a cached response when there is one.
--
-- Who may call it: `postgres` (the function, via SUPABASE_DB_URL) and `service_role`.
-- Never clients: the execute privilege is revoked from public, anon, authenticated.
--
-- INPUT (one JSON object):
--   request_id              uuid, required. Unique per request; settle() finds the
--                           reservation by it. Re-sending the id of a reservation
--                           still in flight returns it again (duplicate: true) and
--                           reserves nothing more. The id of a request
--                           settled, expired or abandoned is refused.
--   user_id                 uuid, required; must exist in auth.users.
--   is_anonymous            boolean (default false); auth.users.is_anonymous counts too.
--   feature                 text (default 'default'); must exist in tollgate.features.
--   model                   text, required: the model the client asked for.
--   estimated_input_tokens  integer 0..10,000,000 (default 0).
--   max_output_tokens       integer 1..1,000,000, or null: the feature's max_tokens.
--                           Always clamped to the feature's and the tier's maximum.
--   estimated_cost_usd      number (or decimal string) 0..1000: the function's
--                           library-based estimate for estimated_input_tokens +
--                           max_output_tokens on the requested model. When
--                           tollgate.model_prices has a row for the routed model
--                           the estimate is recomputed here with it instead.
--                           Absent/null: 0, with an `unpriced` warning.
--   dry_run                 boolean (default false): decide and answer, but reserve
--                           and record nothing (POST /v1/estimate, GET /v1/usage).
--   cache_key               text 1..512 or null: the exact-match cache key.
--   cache_ttl_seconds       integer 0..2592000 or null: the request enables (or
--                           disables, with 0) the cache; null: the feature's TTL.
--
-- DECISION, layer by layer, stopping at the first "no":
--   request      malformed input or unknown user          invalid_request
--   feature      unknown feature                           unknown_feature
--   feature      model not in the feature's allowed_models model_not_allowed
--   feature      feature paused by the operator            feature_paused
--   anomaly      anomaly breaker on, feature not critical  feature_paused
--   budget       a hard-capped budget would pass its limit budget_exceeded
--   throttle     throttle on and feature is background     throttled
--                (normal, batch: restricted mode; critical: as usual)
--   user_window  a sliding window of the tier is full      rate_limited
--   user_quota   daily/monthly token quota reached         (restricted mode, allowed)
--   user_cost_cap monthly cost cap would be passed         cost_cap_exceeded
--   upstream     the provider has no capacity now          queued (wait and ask again),
--                (only for a guarded provider: see          load_shed (background/batch
--                the upstream migration)                   past the queue depth),
--                                                          queue_timeout (waited too long)
--                a normal request while its provider's queue is past its shed depth
--                is downgraded like restricted mode (reason load_shedding)
--   then the reservation: the api_usage row, the user's reserved counters, and
--   the budgets' reserved amounts (the budget check is repeated there, atomically).
-- A fresh cache hit skips budget, throttle, quota and cost cap (it costs nothing)
-- but still counts in the windows.
--
-- OUTPUT (one JSON object; every key always present, null when not computed):
--   allowed boolean, request_id, dry_run boolean, duplicate boolean,
--   layer text|null, code text|null, message text|null, retry_after_seconds int|null,
--   tier text|null,
--   windows [{name, window_seconds, limit, remaining, reset_at}]   (reset_at: when the
--           oldest request in the window leaves it, i.e. when a slot frees up),
--   tokens {daily:{limit,used,reserved,remaining,reset_at}, monthly:{…}}  (limit null:
--           no quota),
--   spend {month_to_date_usd, reserved_usd, cap_usd, remaining_usd, reset_at},
--   warnings [{kind, percent, message}]  (kind: daily_tokens, monthly_tokens,
--           monthly_cost at >= 80%; unpriced),
--   feature {name, priority, max_tokens, cache_ttl_seconds}  (max_tokens: effective),
--   model text (the effective model), restricted {model, max_tokens, reason}|null
--           (reason: throttle | daily_token_quota | monthly_token_quota | load_shedding),
--   route [{provider, model, state: closed|open|half_open, probe boolean, key}]  (try
--           in order; skip `open`; a `probe: true` step is this request's half-open
--           probe; key: the label of the provider key to use, null: the first),
--   prices [{provider, model, input_per_mtok, output_per_mtok, cached_input_per_mtok,
--           cache_write_per_mtok}]  (overrides for the route's models),
--   cached {response, cost_usd, cache_key, created_at, expires_at}|null,
--   reserved {estimated_tokens, estimated_cost_usd}|null,
--   queue {provider, position, depth, poll_after_ms, wait_until}|null  (code queued:
--           call again with the same request_id after poll_after_ms),
--   shed text|null  (downgraded | background | batch: load shedding acted).
--
-- CONCURRENCY. Two kinds of state are checked-then-written:
--   * per user (windows, quotas, cost cap): serialized by a transaction-scoped
--     advisory lock on the user id, taken before anything of the user is read. It
--     needs no row, so a brand-new user's first concurrent calls serialize too, and
--     users never wait for each other. Each statement after the lock reads a fresh
--     snapshot (READ COMMITTED, the default — do not call this in a REPEATABLE READ
--     transaction), so it sees the rows of the calls admitted before it.
--   * per budget (shared by all users): sliced into shards by database session
--     (budget_periods). A hard cap leases each shard a share of what is left, and a
--     request reserves within its shard's lease with one conditional UPDATE,
--     `reserved_total += estimate WHERE reserved_total + estimate <= leased`;
--     Postgres re-checks the WHERE against the latest row version after waiting for
--     a concurrent writer. Leases are granted only under the budget's advisory lock
--     (tollgate.lease_budget), where leases + net settlements never pass the limit,
--     so the cap holds exactly under any concurrency; a request that does not fit
--     its lease while others hold unused ones takes them back first, so none is
--     refused while the budget has room. The UPDATE is the last write of the
--     transaction: its row lock is held only until the commit, and only sessions
--     of the same shard share it — one row for every request serialized them all,
--     and with more sessions than cores each waited for the one before it to be
--     scheduled again. Settlements never touch these rows (they add to the shards
--     of budget_settlements).
--   * per provider, only when it is guarded (a ceiling, low headroom): an advisory
--     lock of the provider, taken by tollgate.upstream_admission() until the commit
--     (shared far from every ceiling, exclusive near one).
--   Lock order everywhere (admit, settle, expiry): the api_usage row, then
--   provider_health rows, provider_keys rows, user_usage_daily rows, usage_daily
--   rows, budgets (by budget id; within one, its advisory lock before its shards)
--   — so no two of them can deadlock, but for one case. A request whose conditional
--   UPDATE waited for another writer of its shard and then found no room keeps that
--   row locked (Postgres locks the latest version to check it again) as it goes on
--   to lease_budget; should a lease being taken back wait for that row meanwhile,
--   Postgres aborts one of the two (40P01). The aborted admission has done nothing,
--   and the function sends it again (db.ts).
-- ============================================================================

-- The parsed input of admit() (numbers as numeric: validated before conversion).
create type tollgate.admit_request as (
  request_id uuid,
  user_id uuid,
  is_anonymous boolean,
  feature text,
  model text,
  estimated_input_tokens numeric,
  max_output_tokens numeric,
  estimated_cost_usd numeric,
  dry_run boolean,
  cache_key text,
  cache_ttl_seconds numeric
);
comment on type tollgate.admit_request is 'Internal: admit()''s input after validation.';

-- A model's route as admission reads it: each step's provider, model, breaker state,
-- whether a half-open probe is due, the key to use, whether every key of the provider
-- is unusable and whether the provider is guarded; and the route's price overrides,
-- with the primary step's prices per million tokens. admit_many() keeps the routes it
-- has read for the rest of its batch (see admit_one()).
create type tollgate.route_read as (
  model text,
  providers text[],
  models text[],
  states text[],
  probe_due boolean[],
  keys text[],
  exhausted boolean[],
  guarded boolean[],
  prices jsonb,
  input_per_mtok numeric,
  output_per_mtok numeric
);
comment on type tollgate.route_read is 'Internal: a route read by admit_one(), kept for the rest of a batch.';

-- The budgets that apply to a feature's requests as admission reads them (by budget
-- id), with their month-to-date commitment: reserved in all shards, and settled net of
-- what settlements released. admit_many() keeps them for the rest of its batch and
-- adds each reservation the batch makes (see admit_one()).
create type tollgate.budget_read as (
  feature text,
  period_start date,
  ids bigint[],
  limits numeric[],
  capped boolean[],
  reserved numeric[],
  settled numeric[]
);
comment on type tollgate.budget_read is 'Internal: the budgets read by admit_one(), kept for the rest of a batch.';

-- The budget's lock: leases are granted (lease_budget) and taken back
-- (budgets_take_back_leases) only under it, until the end of the transaction.
create function tollgate.lock_budget(budget_id bigint)
returns void
language sql
volatile
set search_path = ''
as $$
  select pg_advisory_xact_lock(hashtextextended('tollgate.budget:' || lock_budget.budget_id, 7104));
$$;
comment on function tollgate.lock_budget(bigint) is
  'Internal: takes a budget''s lease lock until the end of the transaction (see lease_budget).';
revoke all on function tollgate.lock_budget(bigint) from public, anon, authenticated;

-- The users' locks: admit() serializes one user's admissions under the user's lock (see
-- CONCURRENCY), and admit_many() takes the locks of all its users first, in one call.
-- They are taken in the order given (unnest() yields its elements in order). The key
-- is a 64-bit hash of the user id, seeded so it does not meet other applications'
-- advisory locks by accident. PL/pgSQL rather than SQL: a SQL function with a SET
-- clause is planned again on every call, and this runs in every admission.
create function tollgate.lock_users(user_ids uuid[])
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
  perform pg_advisory_xact_lock(hashtextextended(u.id::text, 7104)) from unnest(lock_users.user_ids) as u (id);
end;
$$;
comment on function tollgate.lock_users(uuid[]) is
  'Internal: takes users'' admission locks, in the order given, until the end of the transaction (see admit()).';
revoke all on function tollgate.lock_users(uuid[]) from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- tollgate.lease_budget(): a hard-capped reservation its shard's lease cannot take
-- ----------------------------------------------------------------------------
-- admit() reserves on a hard-capped budget within the lease of its session's shard
-- (budget_periods); when the shard has no row for the month yet, or the estimate
-- does not fit its lease, admit() calls this instead, among its last writes. Under
-- the budget's advisory lock (lease changes one at a time) it reads the limit and
-- the settlements afresh and adds up what the shards hold. When the estimate fits
-- what the limit leaves, the shard gets the estimate plus 1/32 of the rest, so that
-- it comes back rarely while the budget has room and the shards hold little when it
-- has not. When it does not fit, the shards' unused leases are taken back first
-- (locking their rows, so waiting for their requests in flight), and the decision
-- is made on what is really reserved: exact, like one counter, without every
-- request sharing one row. Returns whether the estimate was reserved.
create function tollgate.lease_budget(
  budget_id bigint,
  period_start date,
  shard smallint,
  estimate numeric,
  at timestamptz
)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_limit numeric;
  v_settled_net numeric;
  v_held numeric;
begin
  perform tollgate.lock_budget(lease_budget.budget_id);
  -- Each shard holds its lease, or what critical requests exempt from the cap
  -- reserved past it. Leases change only under the lock taken above (a changed
  -- limit takes them all back under it too: budgets_take_back_leases), and
  -- reservations within a lease do not change what its shard holds.
  select b.monthly_limit_usd,
    coalesce((
      select sum(st.spent_usd - st.released_usd)
      from tollgate.budget_settlements as st
      where st.budget_id = b.id and st.period_start = lease_budget.period_start), 0),
    coalesce((
      select sum(greatest(p.leased_usd, p.reserved_total_usd))
      from tollgate.budget_periods as p
      where p.budget_id = b.id and p.period_start = lease_budget.period_start), 0)
  into v_limit, v_settled_net, v_held
  from tollgate.budgets as b
  where b.id = lease_budget.budget_id;

  if v_held + v_settled_net + estimate > v_limit or v_held + v_settled_net >= v_limit then
    with taken_back as (
      update tollgate.budget_periods as p
      set leased_usd = p.reserved_total_usd,
          updated_at = lease_budget.at
      where p.budget_id = lease_budget.budget_id and p.period_start = lease_budget.period_start
      returning p.reserved_total_usd
    )
    select coalesce(sum(t.reserved_total_usd), 0) into v_held from taken_back as t;
    -- Null (the budget was deleted meanwhile) refuses too.
    if not (v_held + v_settled_net + estimate <= v_limit and v_held + v_settled_net < v_limit) then
      return false;
    end if;
  end if;

  insert into tollgate.budget_periods as p (budget_id, period_start, shard, reserved_total_usd, leased_usd, updated_at)
  values (lease_budget.budget_id, lease_budget.period_start, lease_budget.shard, estimate,
    estimate + trunc((v_limit - v_settled_net - v_held - estimate) / 32, 6), lease_budget.at)
  on conflict on constraint budget_periods_pkey do update
  set reserved_total_usd = p.reserved_total_usd + excluded.reserved_total_usd,
      leased_usd = greatest(p.leased_usd, p.reserved_total_usd) + excluded.leased_usd,
      updated_at = excluded.updated_at;
  return true;
end;
$$;

comment on function tollgate.lease_budget(bigint, date, smallint, numeric, timestamptz) is
  'Internal to admit(): reserves an estimate on a hard-capped budget when its shard''s lease cannot take it, granting the shard a new lease under the budget''s lock (taking unused leases back when the budget is nearly used up). Exact: leases plus net settlements never pass the limit.';
revoke all on function tollgate.lease_budget(bigint, date, smallint, numeric, timestamptz)
  from public, anon, authenticated;

-- A budget whose limit or cap changes takes back every unused lease, under the lock
-- lease_budget() grants them under: the next requests of each shard lease again
-- against the new figures. One statement may change several budgets: they are
-- locked one after the other in budget id order (its lock, then its shards), as
-- admit() locks them, so that the two cannot deadlock.
create function tollgate.budgets_take_back_leases()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_changed bigint[];
begin
  select coalesce(array_agg(n.id order by n.id), '{}')
  into v_changed
  from new_budgets as n
  join old_budgets as o on o.id = n.id
  where (o.monthly_limit_usd, o.hard_cap, o.exempt_critical)
    is distinct from (n.monthly_limit_usd, n.hard_cap, n.exempt_critical);
  for v_i in 1 .. cardinality(v_changed) loop
    perform tollgate.lock_budget(v_changed[v_i]);
    update tollgate.budget_periods as p
    set leased_usd = p.reserved_total_usd
    where p.budget_id = v_changed[v_i] and p.leased_usd > p.reserved_total_usd;
  end loop;
  return null;
end;
$$;
comment on function tollgate.budgets_take_back_leases() is
  'Trigger: a budget''s changed limit or cap takes back its shards'' unused leases (see lease_budget).';
revoke all on function tollgate.budgets_take_back_leases() from public, anon, authenticated;

create trigger budgets_take_back_leases after update on tollgate.budgets
referencing old table as old_budgets new table as new_budgets
for each statement
execute function tollgate.budgets_take_back_leases();

-- A quota's warning for admit()'s answer (seed 001: tell users at 80% of a quota), as
-- a JSON array of none or one. No quota (null): none.
create function tollgate.quota_warning(kind text, used numeric, quota numeric, message text)
returns jsonb
language plpgsql
immutable
set search_path = ''
as $$
begin
  return case
    when quota > 0 and used * 100 >= quota * 80 then
      jsonb_build_array(jsonb_build_object('kind', kind, 'percent', floor(used * 100 / quota), 'message', message))
    else '[]'
  end;
end;
$$;
comment on function tollgate.quota_warning(text, numeric, numeric, text) is
  'Internal to admit(): the warning of a quota used to 80% or more, as a JSON array of none or one.';
revoke all on function tollgate.quota_warning(text, numeric, numeric, text) from public, anon, authenticated;

-- admit() is admit_one() with nothing read yet; admit_many() (the batches migration)
-- passes the routes and budgets its earlier requests read, so that a batch reads a
-- model's route and a feature's budgets once, and holds its users' locks already.
--
-- How admit_one() is written: PL/pgSQL keeps each statement's plan for the session,
-- but sets up its executor state again in every transaction — and every lone call is
-- its own transaction. The cost is therefore mostly in the NUMBER of statements run,
-- so admission reads in a few wide statements (configuration; the user's counters and
-- windows; the route and prices; the budgets) and writes in three (api_usage,
-- user_usage_daily, budget_periods).
create function tollgate.admit_one(
  request jsonb,
  user_locked boolean,
  inout routes tollgate.route_read[],
  inout budgets tollgate.budget_read[],
  out answer jsonb
)
language plpgsql
volatile
set search_path = ''
as $$
declare
  v_req tollgate.admit_request;
  v_problem text;
  v_input_tokens integer;
  v_dry_run boolean := false;
  -- Time (taken after the user lock, so it orders like the lock).
  v_now timestamptz;
  v_today date;
  v_month date;
  v_next_day timestamptz;
  v_next_month timestamptz;
  -- Configuration.
  v_tier_name text;
  v_daily_limit bigint;
  v_monthly_limit bigint;
  v_cost_cap numeric;
  v_tier_max_output integer;
  v_feature_name text;
  v_feature_priority text;
  v_feature_models text[];
  v_feature_max_tokens integer;
  v_feature_restricted_max integer;
  v_feature_cache_ttl integer;
  v_feature_paused boolean;
  v_feature_paused_reason text;
  v_throttled boolean;
  v_throttle_reason text;
  v_anomaly_paused boolean;
  v_anomaly_reason text;
  -- The user's counters and windows.
  v_used_today bigint;
  v_reserved_today bigint;
  v_used_month bigint;
  v_reserved_month bigint;
  v_spent_month numeric;
  v_reserved_cost_month numeric;
  v_windows jsonb;
  v_window_block jsonb;
  v_kth timestamptz;
  v_wait integer;
  -- A retried admission.
  v_existing jsonb;
  v_used_elsewhere boolean;
  v_duplicate boolean := false;
  -- Route, pricing, cache.
  v_effective_model text;
  v_max_tokens integer;
  v_restricted_reason text;
  v_route_providers text[];
  v_route_models text[];
  v_route_states text[];
  v_route_probe_due boolean[];
  v_route_keys text[];
  v_route_exhausted boolean[];
  v_route_guarded boolean[];
  v_primary integer;
  v_upstream jsonb;
  v_holds_slot boolean := false;
  v_queue jsonb;
  v_shed text;
  v_shed_depth integer;
  v_queue_depth bigint;
  v_route tollgate.route_read;
  v_budget tollgate.budget_read;
  v_reserved numeric[];
  v_prices_json jsonb;
  v_price_in numeric;
  v_price_out numeric;
  v_estimate numeric;
  v_reserved_tokens integer;
  v_cache_ttl integer;
  v_cache tollgate.response_cache;
  v_cached boolean := false;
  -- Budgets that apply (ordered by id).
  v_budget_ids bigint[];
  v_budget_limits numeric[];
  v_budget_capped boolean[];
  v_budget_reserved numeric[];
  v_budget_settled numeric[];
  v_budget_blocked boolean;
  v_step integer;
  v_reserved_budgets integer := 0;
  v_shard smallint;
  v_fits boolean;
  -- Decision and answer.
  v_allowed boolean := false;
  v_added integer := 0;
  v_layer text;
  v_code text;
  v_message text;
  v_retry_after integer;
  v_warnings jsonb := '[]'::jsonb;
  v_route_json jsonb;
  v_windows_json jsonb;
  v_budget_pending boolean := false;
  v_shown_reserved_tokens bigint := 0;
  v_shown_reserved_cost numeric := 0;
  v_all_warnings jsonb;
  v_answer jsonb;
begin
  <<decide>>
  begin
    ---------------------------------------------------------------- the input
    -- One expression checks every key's JSON type and range (nothing here raises: a bad
    -- value becomes `invalid_request`); then one call converts them.
    v_problem := case
      when request is null or jsonb_typeof(request) <> 'object' then 'the request must be a JSON object'
      when jsonb_typeof(request -> 'request_id') is distinct from 'string'
        or (request ->> 'request_id') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
        then 'request_id must be a UUID'
      when jsonb_typeof(request -> 'user_id') is distinct from 'string'
        or (request ->> 'user_id') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
        then 'user_id must be a UUID'
      when coalesce(jsonb_typeof(request -> 'is_anonymous'), 'null') not in ('boolean', 'null')
        then 'is_anonymous must be a boolean'
      when coalesce(jsonb_typeof(request -> 'dry_run'), 'null') not in ('boolean', 'null')
        then 'dry_run must be a boolean'
      when coalesce(jsonb_typeof(request -> 'feature'), 'null') not in ('string', 'null')
        or length(request ->> 'feature') not between 1 and 64
        then 'feature must be a name of 1 to 64 characters'
      when jsonb_typeof(request -> 'model') is distinct from 'string' or length(request ->> 'model') not between 1 and 200
        then 'model must be a model name of 1 to 200 characters'
      when case coalesce(jsonb_typeof(request -> 'estimated_input_tokens'), 'null')
          when 'null' then false
          when 'number' then (request -> 'estimated_input_tokens')::numeric not between 0 and 10000000
            or (request -> 'estimated_input_tokens')::numeric % 1 <> 0
          else true end
        then 'estimated_input_tokens must be a whole number from 0 to 10,000,000'
      when case coalesce(jsonb_typeof(request -> 'max_output_tokens'), 'null')
          when 'null' then false
          when 'number' then (request -> 'max_output_tokens')::numeric not between 1 and 1000000
            or (request -> 'max_output_tokens')::numeric % 1 <> 0
          else true end
        then 'max_output_tokens must be null or a whole number from 1 to 1,000,000'
      when case coalesce(jsonb_typeof(request -> 'estimated_cost_usd'), 'null')
          when 'null' then false
          when 'number' then (request -> 'estimated_cost_usd')::numeric not between 0 and 1000
          when 'string' then (request ->> 'estimated_cost_usd') !~ '^[0-9]{1,4}(\.[0-9]{1,20})?$'
            or (request ->> 'estimated_cost_usd')::numeric > 1000
          else true end
        then 'estimated_cost_usd must be a number of US dollars from 0 to 1000'
      when coalesce(jsonb_typeof(request -> 'cache_key'), 'null') not in ('string', 'null')
        or length(request ->> 'cache_key') not between 1 and 512
        then 'cache_key must be null or a string of 1 to 512 characters'
      when case coalesce(jsonb_typeof(request -> 'cache_ttl_seconds'), 'null')
          when 'null' then false
          when 'number' then (request -> 'cache_ttl_seconds')::numeric not between 0 and 2592000
            or (request -> 'cache_ttl_seconds')::numeric % 1 <> 0
          else true end
        then 'cache_ttl_seconds must be null or a whole number from 0 to 2,592,000'
    end;
    if v_problem is not null then
      v_dry_run := coalesce(
        case when jsonb_typeof(request -> 'dry_run') = 'boolean' then (request ->> 'dry_run')::boolean end, false);
      v_layer := 'request';
      v_code := 'invalid_request';
      v_message := 'Invalid request: ' || v_problem || '.';
      exit decide;
    end if;
    v_req := jsonb_populate_record(null::tollgate.admit_request, request);
    v_req.feature := coalesce(v_req.feature, 'default');
    v_dry_run := coalesce(v_req.dry_run, false);
    v_input_tokens := coalesce(v_req.estimated_input_tokens, 0)::integer;

    ---------------------------------------------------------------- configuration, in one read
    -- The user (must exist), their plan and tier, the feature and the gateway flags.
    -- A user without a plan is on `anonymous` (anonymous sign-in, by the request or by
    -- auth.users) or `free`.
    select t.name, coalesce(p.daily_token_quota, t.daily_token_quota),
      coalesce(p.monthly_token_quota, t.monthly_token_quota),
      coalesce(p.monthly_cost_cap_usd, t.monthly_cost_cap_usd), t.max_output_tokens,
      f.name, f.priority, f.allowed_models, f.max_tokens, f.restricted_max_tokens, f.cache_ttl_seconds,
      f.paused, f.paused_reason, s.throttled, s.throttle_reason, s.anomaly_paused, s.anomaly_reason,
      pc.shed_queue_depth,
      -- A normal request is downgraded when its provider's queue is this deep (load
      -- shedding, decided here because it changes the model and so the route).
      case when f.priority = 'normal' and pc.shed_queue_depth is not null then (
        select count(*) from tollgate.upstream_queue as q
        where q.provider = coalesce(
            (select rt.provider from tollgate.route_targets as rt where rt.route_model = v_req.model and rt.position = 1),
            case when v_req.model like 'claude%' then 'anthropic' else 'openai' end)
          and q.last_seen_at > clock_timestamp() - make_interval(secs => (
            select us.queue_ticket_ttl_seconds from tollgate.upstream_settings as us))) end
    into v_tier_name, v_daily_limit, v_monthly_limit, v_cost_cap, v_tier_max_output,
      v_feature_name, v_feature_priority, v_feature_models, v_feature_max_tokens, v_feature_restricted_max,
      v_feature_cache_ttl, v_feature_paused, v_feature_paused_reason, v_throttled, v_throttle_reason,
      v_anomaly_paused, v_anomaly_reason, v_shed_depth, v_queue_depth
    from auth.users as u
    left join tollgate.user_plans as p on p.user_id = u.id
    left join tollgate.tiers as t on t.name = coalesce(p.tier,
      case when coalesce(v_req.is_anonymous, false) or coalesce(u.is_anonymous, false) then 'anonymous' else 'free' end)
    left join tollgate.features as f on f.name = v_req.feature
    left join tollgate.priority_classes as pc on pc.priority = f.priority
    left join tollgate.gateway_state as s on s.id
    where u.id = v_req.user_id;
    if not found then
      v_layer := 'request';
      v_code := 'invalid_request';
      v_message := 'Invalid request: unknown user.';
      exit decide;
    end if;
    if v_tier_name is null then
      raise exception 'tollgate.admit: the tier of user % is not configured', v_req.user_id
        using errcode = 'P0001',
          hint = 'Insert the tier into tollgate.tiers (the `free` and `anonymous` tiers are the defaults).';
    end if;

    ---------------------------------------------------------------- the user's counters and windows, under the user lock
    -- Serializes this user's admissions (see CONCURRENCY above); released at commit.
    -- Dry runs decide without it.
    if not v_dry_run and not user_locked then
      perform tollgate.lock_users(array[v_req.user_id]);
    end if;
    v_now := clock_timestamp();
    v_today := (v_now at time zone 'UTC')::date;
    v_month := date_trunc('month', v_today::timestamp)::date;
    v_next_day := (v_today + 1)::timestamp at time zone 'UTC';
    v_next_month := (v_month + interval '1 month')::timestamp at time zone 'UTC';

    -- Token quotas and the cost cap read the per-user daily rollup (at most 31 rows);
    -- the tier's sliding windows count api_usage (one index range scan each on
    -- (user_id, created_at)); and a reservation, a call or an abandonment (see
    -- tollgate.abandon) already made under this request id.
    select
      coalesce(sum(d.input_tokens + d.output_tokens) filter (where d.day = v_today), 0),
      coalesce(sum(d.reserved_tokens) filter (where d.day = v_today), 0),
      coalesce(sum(d.input_tokens + d.output_tokens), 0),
      coalesce(sum(d.reserved_tokens), 0),
      coalesce(sum(d.cost_usd), 0),
      coalesce(sum(d.reserved_cost_usd), 0),
      (select coalesce(jsonb_agg(jsonb_build_object(
          'name', w.name,
          'window_seconds', w.window_seconds,
          'limit', w.max_requests,
          'count', c.n,
          'oldest', c.oldest) order by w.window_seconds, w.name), '[]')
        from tollgate.tier_windows as w
        cross join lateral (
          select count(*) as n, min(u.created_at) as oldest
          from public.api_usage as u
          where u.user_id = v_req.user_id
            and u.created_at > v_now - make_interval(secs => w.window_seconds)
        ) as c
        where w.tier = v_tier_name),
      (select to_jsonb(u) from public.api_usage as u where u.request_id = v_req.request_id and not v_dry_run),
      coalesce(
        (select true from public.ai_api_calls as c where c.request_id = v_req.request_id and not v_dry_run),
        (select true from tollgate.abandoned_requests as a where a.request_id = v_req.request_id and not v_dry_run))
    into v_used_today, v_reserved_today, v_used_month, v_reserved_month, v_spent_month, v_reserved_cost_month,
      v_windows, v_existing, v_used_elsewhere
    from public.user_usage_daily as d
    where d.user_id = v_req.user_id and d.day >= v_month;

    -- A full window: wait until enough of its oldest requests have left it for one
    -- more to fit (the longest such wait over the windows).
    for v_i in 0 .. jsonb_array_length(v_windows) - 1 loop
      v_window_block := v_windows -> v_i;
      continue when (v_window_block ->> 'count')::bigint < (v_window_block ->> 'limit')::bigint;
      v_kth := null;
      if (v_window_block ->> 'limit')::integer > 0 then
        select u.created_at into v_kth
        from public.api_usage as u
        where u.user_id = v_req.user_id
          and u.created_at > v_now - make_interval(secs => (v_window_block ->> 'window_seconds')::integer)
        order by u.created_at
        offset (v_window_block ->> 'count')::bigint - (v_window_block ->> 'limit')::bigint
        limit 1;
      end if;
      v_wait := greatest(1, ceil(extract(epoch from coalesce(v_kth, v_now)
        + make_interval(secs => (v_window_block ->> 'window_seconds')::integer) - v_now))::integer);
      if v_retry_after is null or v_wait > v_retry_after then
        v_retry_after := v_wait;
        v_message := format('Rate limit reached: %s requests per %s. Try again in %s s.',
          v_window_block ->> 'limit', v_window_block ->> 'name', v_wait);
      end if;
    end loop;

    ---------------------------------------------------------------- a retried admission
    if v_existing is not null then
      if (v_existing ->> 'user_id')::uuid <> v_req.user_id or v_existing ->> 'status' <> 'reserved' then
        v_used_elsewhere := true;
      else
        v_duplicate := true;
      end if;
    end if;
    if v_used_elsewhere then
      v_layer := 'request';
      v_code := 'invalid_request';
      v_message := 'Invalid request: request_id was already used.';
      v_retry_after := null;
      exit decide;
    end if;

    ---------------------------------------------------------------- layers 1-3: the feature
    if v_feature_name is null then
      v_layer := 'feature';
      v_code := 'unknown_feature';
      v_message := format('Unknown feature "%s".', v_req.feature);
      v_retry_after := null;
      exit decide;
    end if;
    if not v_duplicate then
      if v_feature_models is not null and not (v_req.model = any (v_feature_models)) then
        v_layer := 'feature';
        v_code := 'model_not_allowed';
        v_message := format('Model "%s" is not allowed for feature "%s".', v_req.model, v_feature_name);
        v_retry_after := null;
        exit decide;
      end if;
      if v_feature_paused then
        v_layer := 'feature';
        v_code := 'feature_paused';
        v_message := format('Feature "%s" is paused%s.', v_feature_name, coalesce(': ' || v_feature_paused_reason, ''));
        v_retry_after := null;
        exit decide;
      end if;
      if coalesce(v_anomaly_paused, false) and v_feature_priority <> 'critical' then
        v_layer := 'anomaly';
        v_code := 'feature_paused';
        v_message := format('AI features are paused after unusual spending%s; essential features still work.',
          coalesce(' (' || v_anomaly_reason || ')', ''));
        v_retry_after := 60;
        exit decide;
      end if;
    end if;

    ---------------------------------------------------------------- cache, restricted mode
    v_cache_ttl := coalesce(v_req.cache_ttl_seconds::integer, v_feature_cache_ttl);
    v_max_tokens := least(coalesce(v_req.max_output_tokens::integer, v_feature_max_tokens), v_feature_max_tokens,
      v_tier_max_output);
    v_effective_model := v_req.model;
    if v_duplicate then
      v_cached := (v_existing ->> 'cached')::boolean;
      v_effective_model := v_existing ->> 'model';
      v_max_tokens := (v_existing ->> 'max_output_tokens')::integer;
    else
      if v_req.cache_key is not null and v_cache_ttl > 0 then
        select c.* into v_cache
        from tollgate.response_cache as c
        where c.cache_key = v_req.cache_key and c.expires_at > v_now;
        v_cached := found;
      end if;
      if not v_cached then
        if coalesce(v_throttled, false) and v_feature_priority in ('normal', 'batch') then
          v_restricted_reason := 'throttle';
        elsif v_daily_limit is not null and v_used_today + v_reserved_today >= v_daily_limit then
          v_restricted_reason := 'daily_token_quota';
        elsif v_monthly_limit is not null and v_used_month + v_reserved_month >= v_monthly_limit then
          v_restricted_reason := 'monthly_token_quota';
        elsif v_queue_depth >= v_shed_depth then
          v_restricted_reason := 'load_shedding';
          v_shed := 'downgraded';
        end if;
        if v_restricted_reason is not null then
          v_effective_model := coalesce(
            (select r.cheaper_model from tollgate.routes as r where r.model = v_req.model), v_req.model);
          -- Shedding trades the model for capacity; the answer keeps its length.
          if v_restricted_reason <> 'load_shedding' then
            v_max_tokens := least(v_max_tokens, v_feature_restricted_max);
          end if;
          v_layer := case v_restricted_reason when 'throttle' then 'throttle' when 'load_shedding' then 'upstream'
            else 'user_quota' end;
        end if;
      end if;
    end if;

    ---------------------------------------------------------------- route and prices, then budgets
    -- The route of the effective model with each step's breaker (no row: closed); a
    -- model without a route goes to one provider chosen by its name. The price
    -- overrides of the route's models (a dated snapshot such as gpt-4o-2024-08-06
    -- matches its undated row); the primary step's replaces the function's estimate.
    -- A batch reads each model's route once: `routes` holds those its earlier
    -- requests read, and is emptied whenever one of them takes a half-open probe, so
    -- a route used here is never older than the batch. (The upstream step changes
    -- nothing a route reads but the provider's queue: a ticket it adds is for a
    -- provider shown guarded already, and one it removes at most leaves the provider
    -- shown guarded, so that the next request takes the step again and finds room.)
    v_route := null;
    for v_i in 1 .. coalesce(cardinality(routes), 0) loop
      if (routes[v_i]).model = v_effective_model then
        v_route := routes[v_i];
        exit;
      end if;
    end loop;
    if v_route.model is null then
      with route as (
        select rt.position, rt.provider, rt.model
        from tollgate.route_targets as rt
        where rt.route_model = v_effective_model
        union all
        select 1, case when v_effective_model like 'claude%' then 'anthropic' else 'openai' end, v_effective_model
        where not exists (select from tollgate.route_targets as rt2 where rt2.route_model = v_effective_model)
      ),
      steps as (
        select r.position, r.provider, r.model, coalesce(h.state, 'closed') as state,
          coalesce(
            (h.state = 'open' and h.opened_at + make_interval(secs => h.cooldown_seconds) <= v_now)
            or (h.state = 'half_open' and h.probe_started_at + make_interval(secs => h.cooldown_seconds) <= v_now),
            false) as probe_due,
          k.key, coalesce(k.exhausted, false) as exhausted,
          coalesce(k.guarded, false)
            or exists (select from tollgate.upstream_queue as q where q.provider = r.provider) as guarded
        from route as r
        left join tollgate.provider_health as h on h.provider = r.provider and h.model = r.model
        -- The provider's keys (see the upstream migration): the first usable one; none
        -- usable (dead, expired, over budget); or a key under a ceiling or low on
        -- headroom, which sends admission to its queue step.
        left join lateral (
          select
            (array_agg(pk.label order by pk.position) filter (where pk.usable))[1] as key,
            not bool_or(pk.usable) as exhausted,
            bool_or(pk.usable and (pk.max_in_flight is not null or pk.requests_per_minute is not null
              or pk.tokens_per_minute is not null
              or (pk.observed_at is not null and (pk.requests_reset_at > v_now or pk.tokens_reset_at > v_now))))
              as guarded
          from (
            -- key_usable() decides; a key with no expiry and no budget needs no call.
            select k2.*, case when k2.expires_on is null and k2.daily_budget_usd is null then k2.state = 'active'
                else tollgate.key_usable(k2, v_now) end as usable
            from tollgate.provider_keys as k2
            where k2.provider = r.provider
          ) as pk
        ) as k on true
      ),
      prices as (
        select mp.*, s.position
        from steps as s
        join tollgate.model_prices as mp on mp.provider = s.provider
          and mp.model in (lower(s.model), regexp_replace(lower(s.model), '-(\d{4}-\d{2}-\d{2}|\d{8})$', ''))
      )
      select v_effective_model, r.providers, r.models, r.states, r.probe_due, r.keys, r.exhausted, r.guarded,
        p.prices, p.input_per_mtok, p.output_per_mtok
      into v_route
      from (
        select array_agg(s.provider order by s.position) as providers, array_agg(s.model order by s.position) as models,
          array_agg(s.state order by s.position) as states, array_agg(s.probe_due order by s.position) as probe_due,
          array_agg(s.key order by s.position) as keys, array_agg(s.exhausted order by s.position) as exhausted,
          array_agg(s.guarded order by s.position) as guarded
        from steps as s
      ) as r
      cross join (
        select
          coalesce(jsonb_agg(distinct jsonb_build_object(
            'provider', pr.provider,
            'model', pr.model,
            'input_per_mtok', pr.input_per_mtok,
            'output_per_mtok', pr.output_per_mtok,
            'cached_input_per_mtok', pr.cached_input_per_mtok,
            'cache_write_per_mtok', pr.cache_write_per_mtok)), '[]') as prices,
          (array_agg(pr.input_per_mtok order by length(pr.model) desc) filter (where pr.position = 1))[1]
            as input_per_mtok,
          (array_agg(pr.output_per_mtok order by length(pr.model) desc) filter (where pr.position = 1))[1]
            as output_per_mtok
        from prices as pr
      ) as p;
      routes := routes || v_route;
    end if;
    v_route_providers := v_route.providers;
    v_route_models := v_route.models;
    v_route_states := v_route.states;
    v_route_probe_due := v_route.probe_due;
    v_route_keys := v_route.keys;
    v_route_exhausted := v_route.exhausted;
    v_route_guarded := v_route.guarded;
    v_prices_json := v_route.prices;
    v_price_in := v_route.input_per_mtok;
    v_price_out := v_route.output_per_mtok;

    -- The budgets that apply, with their month-to-date commitment. A batch reads them
    -- once per feature and adds its own reservations as it makes them (below).
    v_budget := null;
    for v_i in 1 .. coalesce(cardinality(budgets), 0) loop
      if (budgets[v_i]).feature = v_feature_name and (budgets[v_i]).period_start = v_month then
        v_budget := budgets[v_i];
        exit;
      end if;
    end loop;
    if v_budget.feature is null then
      select v_feature_name, v_month, coalesce(array_agg(bu.id order by bu.id), '{}'),
        coalesce(array_agg(bu.monthly_limit_usd order by bu.id), '{}'),
        coalesce(array_agg(bu.capped order by bu.id), '{}'),
        coalesce(array_agg(bu.reserved_total_usd order by bu.id), '{}'),
        coalesce(array_agg(bu.settled_net_usd order by bu.id), '{}')
      into v_budget
      from (
        -- committed = reserved_total - released + spent (see budget_periods). What other
        -- transactions reserve or settle meanwhile shows in the next read (the next batch):
        -- a hard cap is checked again, atomically, where this request reserves (below), so
        -- a read a moment old can only move a refusal from this layer to that one.
        select b.id, b.monthly_limit_usd,
          b.hard_cap and not (b.exempt_critical and v_feature_priority = 'critical') as capped,
          coalesce((
            select sum(p.reserved_total_usd)
            from tollgate.budget_periods as p
            where p.budget_id = b.id and p.period_start = v_month), 0) as reserved_total_usd,
          coalesce((
            select sum(st.spent_usd - st.released_usd)
            from tollgate.budget_settlements as st
            where st.budget_id = b.id and st.period_start = v_month), 0) as settled_net_usd
        from tollgate.budgets as b
        where b.scope = 'global' or b.feature = v_feature_name
      ) as bu;
      budgets := budgets || v_budget;
    end if;
    v_budget_ids := v_budget.ids;
    v_budget_limits := v_budget.limits;
    v_budget_capped := v_budget.capped;
    v_budget_reserved := v_budget.reserved;
    v_budget_settled := v_budget.settled;

    -- The primary step, the first the function will try: past open breakers (three
    -- 429s in a row open one too) and providers whose keys are all dead, expired or
    -- over budget — shown `open`, so that the function skips them as well.
    v_primary := null;
    for v_i in 1 .. coalesce(cardinality(v_route_providers), 0) loop
      if (v_route_states[v_i] <> 'open' or v_route_probe_due[v_i]) and not v_route_exhausted[v_i] then
        v_primary := v_i;
        exit;
      end if;
    end loop;
    if v_duplicate then
      -- A retried admission keeps the key its reservation holds.
      v_route_keys[v_primary] := coalesce(v_existing ->> 'provider_key', v_route_keys[v_primary]);
    end if;
    for v_i in 1 .. coalesce(cardinality(v_route_providers), 0) loop
      if v_route_exhausted[v_i] then
        v_route_states[v_i] := 'open';
        v_route_probe_due[v_i] := false;
      end if;
    end loop;

    ---------------------------------------------------------------- the estimate
    if v_duplicate then
      v_estimate := (v_existing ->> 'reserved_cost')::numeric;
      v_reserved_tokens := (v_existing ->> 'estimated_input_tokens')::integer
        + (v_existing ->> 'max_output_tokens')::integer;
    elsif v_cached then
      v_estimate := 0;
      v_reserved_tokens := 0;
      v_budget_ids := '{}';
    else
      if v_price_in is not null then
        -- USD per million tokens = micro-dollars per token; round up to the micro-dollar.
        v_estimate := round(ceil(v_input_tokens * v_price_in + v_max_tokens * v_price_out) / 1000000, 6);
      else
        v_estimate := round(ceil(coalesce(v_req.estimated_cost_usd, 0) * 1000000) / 1000000, 6);
        if v_req.estimated_cost_usd is null then
          v_warnings := v_warnings || jsonb_build_object('kind', 'unpriced', 'percent', null,
            'message', 'No cost estimate was given: the reservation counts no money.');
        end if;
      end if;
      if v_estimate > 1000 then
        v_layer := 'request';
        v_code := 'invalid_request';
        v_message := 'Invalid request: the estimated cost is over 1000 USD.';
        v_retry_after := null;
        exit decide;
      end if;
      v_reserved_tokens := v_input_tokens + v_max_tokens;
    end if;

    if not v_duplicate then
      ---------------------------------------------------------------- layer 4: budgets
      -- A read here, in layer order; repeated atomically at the reservation below.
      v_budget_blocked := false;
      if not v_cached then
        for v_i in 1 .. cardinality(v_budget_ids) loop
          if v_budget_capped[v_i]
            and (v_budget_reserved[v_i] + v_budget_settled[v_i] + v_estimate > v_budget_limits[v_i]
              or v_budget_reserved[v_i] + v_budget_settled[v_i] >= v_budget_limits[v_i]) then
            v_budget_blocked := true;
          end if;
        end loop;
      end if;
      if v_budget_blocked then
        v_layer := 'budget';
        v_code := 'budget_exceeded';
        v_message := 'The monthly AI budget is used up; requests resume when the next month starts or the budget is raised.';
        v_retry_after := ceil(extract(epoch from v_next_month - v_now))::integer;
        exit decide;
      end if;

      ---------------------------------------------------------------- layer 5: the throttle sheds background work
      if not v_cached and coalesce(v_throttled, false) and v_feature_priority = 'background' then
        v_layer := 'throttle';
        v_code := 'throttled';
        v_message := format('The gateway is throttled%s: background requests are paused.',
          coalesce(' (' || v_throttle_reason || ')', ''));
        v_retry_after := 60;
        exit decide;
      end if;

      ---------------------------------------------------------------- layer 6: the tier's sliding windows
      if v_retry_after is not null then
        v_layer := 'user_window';
        v_code := 'rate_limited';
        exit decide;
      end if;

      ---------------------------------------------------------------- layer 7: the monthly cost cap is hard
      -- (token quotas only restrict: see restricted mode above)
      if not v_cached and v_cost_cap is not null
        and (v_spent_month + v_reserved_cost_month + v_estimate > v_cost_cap
          or v_spent_month + v_reserved_cost_month >= v_cost_cap) then
        v_layer := 'user_cost_cap';
        v_code := 'cost_cap_exceeded';
        v_message := format('Your plan''s monthly AI spending cap (%s USD) is reached; it resets next month.',
          to_char(v_cost_cap, 'FM999999990.00'));
        v_retry_after := ceil(extract(epoch from v_next_month - v_now))::integer;
        exit decide;
      end if;

      ---------------------------------------------------------------- layer 8: the provider's capacity
      -- Only for a guarded provider (see the upstream migration): everything above
      -- passed, so a request that waits is one that will run.
      if not v_cached and not v_dry_run and v_route_guarded[v_primary] then
        v_upstream := tollgate.upstream_admission(v_req.request_id, v_req.user_id, v_route_providers[v_primary],
          v_feature_priority, v_reserved_tokens, v_now);
        if v_upstream ->> 'decision' = 'go' then
          v_route_keys[v_primary] := v_upstream ->> 'key';
          v_holds_slot := (v_upstream ->> 'holds_slot')::boolean;
        else
          v_layer := 'upstream';
          v_retry_after := (v_upstream ->> 'retry_after_seconds')::integer;
          case v_upstream ->> 'decision'
            when 'queued' then
              v_code := 'queued';
              v_queue := v_upstream -> 'queue';
              v_message := format('Waiting for %s capacity: position %s in the queue.',
                v_route_providers[v_primary], v_queue ->> 'position');
            when 'shed' then
              v_code := 'load_shed';
              v_shed := v_feature_priority;
              v_message := format('The %s queue is full: %s requests are shed first. Try again later.',
                v_route_providers[v_primary], v_feature_priority);
            else
              v_code := 'queue_timeout';
              v_message := format('No %s capacity freed up within the %s priority''s longest wait. Try again in %s s.',
                v_route_providers[v_primary], v_feature_priority, v_retry_after);
          end case;
          exit decide;
        end if;
      end if;
    end if;
    v_retry_after := null;
    v_message := null;
    v_allowed := true;
    if v_dry_run or v_duplicate then
      exit decide;
    end if;

    ---------------------------------------------------------------- the reservation
    -- Half-open probes first (provider_health rows come before user rows in the lock
    -- order): an open breaker whose cooldown has passed is granted to exactly one
    -- request — the conditional UPDATE re-checks after a concurrent grant.
    if not v_cached and true = any (v_route_probe_due) then
      -- In (provider, model) order, the order settle() updates breakers in.
      for v_step in
        select s.i from generate_subscripts(v_route_providers, 1) as s (i)
        order by v_route_providers[s.i], v_route_models[s.i]
      loop
        if v_route_probe_due[v_step] then
          update tollgate.provider_health as h
          set state = 'half_open',
              probe_request_id = v_req.request_id,
              probe_started_at = v_now,
              updated_at = v_now
          where h.provider = v_route_providers[v_step]
            and h.model = v_route_models[v_step]
            and ((h.state = 'open' and h.opened_at + make_interval(secs => h.cooldown_seconds) <= v_now)
              or (h.state = 'half_open' and h.probe_started_at + make_interval(secs => h.cooldown_seconds) <= v_now));
          v_route_probe_due[v_step] := found;
          if found then
            v_route_states[v_step] := 'probe';
          end if;
        end if;
      end loop;
      -- Breakers changed (or were found taken): later requests of a batch read them again.
      routes := '{}';
    end if;

    insert into public.api_usage (
      request_id, user_id, created_at, tokens_used, estimated_cost, feature, provider, model, status,
      estimated_input_tokens, max_output_tokens, reserved_cost, budget_ids, cached, provider_key, holds_upstream_slot)
    values (
      v_req.request_id, v_req.user_id, v_now, v_reserved_tokens, v_estimate, v_feature_name,
      v_route_providers[coalesce(v_primary, 1)], v_effective_model, 'reserved', case when v_cached then 0 else v_input_tokens end,
      case when v_cached then 0 else v_max_tokens end, v_estimate, v_budget_ids, v_cached,
      v_route_keys[coalesce(v_primary, 1)], v_holds_slot);
    v_added := 1;

    if v_reserved_tokens > 0 or v_estimate > 0 then
      insert into public.user_usage_daily as d (user_id, day, reserved_tokens, reserved_cost_usd, updated_at)
      values (v_req.user_id, v_today, v_reserved_tokens, v_estimate, v_now)
      on conflict (user_id, day) do update
        set reserved_tokens = d.reserved_tokens + excluded.reserved_tokens,
            reserved_cost_usd = d.reserved_cost_usd + excluded.reserved_cost_usd,
            updated_at = excluded.updated_at;
    end if;

    -- The budget reservation comes last of all, after the answer is built below:
    -- see CONCURRENCY.
    v_budget_pending := cardinality(v_budget_ids) > 0;
  end decide;

  ---------------------------------------------------------------- the answer, then the budgets
  -- Pass 1 builds the answer for the decision so far and then, for an admitted
  -- request, reserves on the budgets as the very last statements, so that the shared
  -- budget row is locked only from its UPDATE to the commit. Should a concurrent
  -- request have taken the rest of a budget since layer 4, pass 2 undoes this
  -- request's writes and answers the refusal.
  <<passes>>
  for v_pass in 1 .. 2 loop
    if v_allowed then
      v_code := null;
      if v_restricted_reason is null then
        v_layer := null;
      end if;
      v_route_json := null;
      for v_i in 1 .. coalesce(cardinality(v_route_providers), 0) loop
        v_route_json := coalesce(v_route_json, '[]') || jsonb_build_object(
          'provider', v_route_providers[v_i],
          'model', v_route_models[v_i],
          'state', case v_route_states[v_i] when 'probe' then 'half_open' when 'closed' then 'closed' else 'open' end,
          'probe', v_route_states[v_i] = 'probe',
          'key', v_route_keys[v_i]);
      end loop;
    end if;

    if v_tier_name is not null then
      -- This request's own reservation, once made (a refusal may come before its estimate).
      v_shown_reserved_tokens := case when v_added > 0 then v_reserved_tokens else 0 end;
      v_shown_reserved_cost := case when v_added > 0 then v_estimate else 0 end;
      v_all_warnings := v_warnings
        || tollgate.quota_warning('daily_tokens', v_used_today + v_reserved_today + v_shown_reserved_tokens,
          v_daily_limit, 'You have used most of today''s token quota.')
        || tollgate.quota_warning('monthly_tokens', v_used_month + v_reserved_month + v_shown_reserved_tokens,
          v_monthly_limit, 'You have used most of this month''s token quota.')
        || tollgate.quota_warning('monthly_cost', v_spent_month + v_reserved_cost_month + v_shown_reserved_cost,
          v_cost_cap, 'You have used most of this month''s spending cap.');
    else
      v_all_warnings := v_warnings;
    end if;

    -- Refusals are logged (a request waiting in the queue is not refused, yet), and
    -- so are downgrades by load shedding (seed 003: every shed request is counted).
    if not v_dry_run and ((not v_allowed and v_code is distinct from 'queued') or (v_allowed and v_shed is not null))
    then
      insert into tollgate.rejections (created_at, request_id, user_id, tier, feature, model, layer, code)
      values (coalesce(v_now, clock_timestamp()), v_req.request_id, v_req.user_id, v_tier_name,
        left(coalesce(v_req.feature, request ->> 'feature'), 64), left(coalesce(v_req.model, request ->> 'model'), 200),
        v_layer, case when v_allowed then 'downgraded' else v_code end);
    end if;

    -- What remains of each window once this request is admitted (if it is), and when
    -- the oldest request in it leaves it.
    v_windows_json := null;
    for v_i in 0 .. coalesce(jsonb_array_length(v_windows), 0) - 1 loop
      v_window_block := v_windows -> v_i;
      v_windows_json := coalesce(v_windows_json, '[]') || jsonb_build_object(
        'name', v_window_block -> 'name',
        'window_seconds', v_window_block -> 'window_seconds',
        'limit', v_window_block -> 'limit',
        'remaining', greatest((v_window_block ->> 'limit')::bigint - (v_window_block ->> 'count')::bigint - v_added, 0),
        'reset_at', case
          when (v_window_block ->> 'count')::bigint > 0
            then (v_window_block ->> 'oldest')::timestamptz
              + make_interval(secs => (v_window_block ->> 'window_seconds')::integer)
          when v_added > 0 then v_now + make_interval(secs => (v_window_block ->> 'window_seconds')::integer)
          else v_now
        end);
    end loop;

    -- One expression, without a query in it: PL/pgSQL evaluates it without setting up
    -- a statement's executor.
    v_answer := jsonb_build_object(
      'allowed', v_allowed,
      'request_id', coalesce(to_jsonb(v_req.request_id), request -> 'request_id'),
      'dry_run', v_dry_run,
      'duplicate', v_duplicate,
      'layer', v_layer,
      'code', v_code,
      'message', v_message,
      'retry_after_seconds', v_retry_after,
      'tier', v_tier_name,
      'windows', v_windows_json,
      'tokens', case when v_tier_name is not null then jsonb_build_object(
        'daily', jsonb_build_object(
          'limit', v_daily_limit, 'used', v_used_today, 'reserved', v_reserved_today + v_shown_reserved_tokens,
          'remaining', case when v_daily_limit is not null
            then greatest(v_daily_limit - v_used_today - v_reserved_today - v_shown_reserved_tokens, 0) end,
          'reset_at', v_next_day),
        'monthly', jsonb_build_object(
          'limit', v_monthly_limit, 'used', v_used_month, 'reserved', v_reserved_month + v_shown_reserved_tokens,
          'remaining', case when v_monthly_limit is not null
            then greatest(v_monthly_limit - v_used_month - v_reserved_month - v_shown_reserved_tokens, 0) end,
          'reset_at', v_next_month)) end,
      'spend', case when v_tier_name is not null then jsonb_build_object(
        'month_to_date_usd', v_spent_month,
        'reserved_usd', v_reserved_cost_month + v_shown_reserved_cost,
        'cap_usd', v_cost_cap,
        'remaining_usd', case when v_cost_cap is not null
          then greatest(v_cost_cap - v_spent_month - v_reserved_cost_month - v_shown_reserved_cost, 0) end,
        'reset_at', v_next_month) end,
      'warnings', v_all_warnings,
      'feature', case when v_feature_name is not null then jsonb_build_object(
        'name', v_feature_name,
        'priority', v_feature_priority,
        'max_tokens', v_max_tokens,
        'cache_ttl_seconds', v_cache_ttl) end,
      'model', v_effective_model,
      'restricted', case when v_restricted_reason is not null and v_allowed then jsonb_build_object(
        'model', v_effective_model,
        'max_tokens', v_max_tokens,
        'reason', v_restricted_reason) end,
      'route', v_route_json,
      'prices', case when v_allowed then v_prices_json end,
      'cached', case when v_cached and v_allowed and v_cache.cache_key is not null then jsonb_build_object(
        'response', v_cache.response,
        'cost_usd', v_cache.cost_usd,
        'cache_key', v_cache.cache_key,
        'created_at', v_cache.created_at,
        'expires_at', v_cache.expires_at) end,
      'reserved', case when v_allowed then jsonb_build_object(
        'estimated_tokens', v_reserved_tokens,
        'estimated_cost_usd', v_estimate) end,
      'queue', v_queue,
      'shed', v_shed
    );

    exit when not v_budget_pending;
    v_budget_pending := false;
    -- The budgets, last of all (see CONCURRENCY): reserve on each in id order, on
    -- this session's shard; a hard cap within the shard's lease, or else through
    -- tollgate.lease_budget. A shard's first request of a month creates its row.
    v_shard := pg_backend_pid() % 16;
    for v_i in 1 .. cardinality(v_budget_ids) loop
      update tollgate.budget_periods as p
      set reserved_total_usd = p.reserved_total_usd + v_estimate,
          updated_at = v_now
      where p.budget_id = v_budget_ids[v_i]
        and p.period_start = v_month
        and p.shard = v_shard
        and (not v_budget_capped[v_i]
          or (p.reserved_total_usd + v_estimate <= p.leased_usd and p.reserved_total_usd < p.leased_usd));
      v_fits := found;
      if not v_fits and v_budget_capped[v_i] then
        v_fits := tollgate.lease_budget(v_budget_ids[v_i], v_month, v_shard, v_estimate, v_now);
      elsif not v_fits then
        insert into tollgate.budget_periods as p (budget_id, period_start, shard, reserved_total_usd, updated_at)
        values (v_budget_ids[v_i], v_month, v_shard, v_estimate, v_now)
        on conflict on constraint budget_periods_pkey do update
        set reserved_total_usd = p.reserved_total_usd + excluded.reserved_total_usd,
            updated_at = excluded.updated_at;
        v_fits := true;
      end if;
      if not v_fits then
        -- Concurrent requests took the rest of the budget since the check above:
        -- undo this transaction's writes and refuse.
        update tollgate.budget_periods as p
        set reserved_total_usd = p.reserved_total_usd - v_estimate
        where p.budget_id = any (v_budget_ids[1:v_reserved_budgets]) and p.period_start = v_month
          and p.shard = v_shard;
        delete from public.api_usage as u where u.request_id = v_req.request_id;
        update public.user_usage_daily as d
        set reserved_tokens = d.reserved_tokens - v_reserved_tokens,
            reserved_cost_usd = d.reserved_cost_usd - v_estimate
        where d.user_id = v_req.user_id and d.day = v_today and (v_reserved_tokens > 0 or v_estimate > 0);
        update tollgate.provider_health as h
        set state = 'open', probe_request_id = null, probe_started_at = null
        where h.probe_request_id = v_req.request_id and h.state = 'half_open';
        v_added := 0;
        v_allowed := false;
        v_layer := 'budget';
        v_code := 'budget_exceeded';
        v_message := 'The monthly AI budget is used up; requests resume when the next month starts or the budget is raised.';
        v_retry_after := ceil(extract(epoch from v_next_month - v_now))::integer;
        continue passes;
      end if;
      v_reserved_budgets := v_i;
    end loop;
    -- Reserved on every budget: the answer of pass 1 stands. The batch's later requests
    -- see this reservation in the budgets it has read, as they would in a new read.
    for v_b in 1 .. coalesce(cardinality(budgets), 0) loop
      v_budget := budgets[v_b];
      continue when v_budget.period_start <> v_month;
      v_reserved := v_budget.reserved;
      for v_j in 1 .. cardinality(v_budget.ids) loop
        if v_budget.ids[v_j] = any (v_budget_ids) then
          v_reserved[v_j] := v_reserved[v_j] + v_estimate;
        end if;
      end loop;
      v_budget.reserved := v_reserved;
      budgets[v_b] := v_budget;
    end loop;
    exit passes;
  end loop;
  answer := v_answer;
end;
$$;
comment on function tollgate.admit_one(jsonb, boolean, tollgate.route_read[], tollgate.budget_read[]) is
  'Internal to admit() and admit_many(): one admission, given whether its batch holds the user''s lock already and the routes and budgets it has read so far (and returning them).';
revoke all on function tollgate.admit_one(jsonb, boolean, tollgate.route_read[], tollgate.budget_read[])
  from public, anon, authenticated;

create function tollgate.admit(request jsonb)
returns jsonb
language plpgsql
volatile
security definer
set search_path = ''
as $$
begin
  return (tollgate.admit_one(request, false, '{}', '{}')).answer;
end;
$$;
comment on function tollgate.admit(jsonb) is
  'Admission: decides (feature, anomaly, budget, throttle, windows, quotas, cost cap), reserves the estimate and returns the decision, limits, restricted-mode caps, route with breaker states, price overrides and cache hit as one JSON object. Atomic under concurrency. Called by the ai function as postgres (or service_role); never by clients. Contract in the header of this migration.';

revoke all on function tollgate.admit(jsonb) from public, anon, authenticated;
grant execute on function tollgate.admit(jsonb) to service_role;

-- ----------------------------------------------------------------------------
-- tollgate.usage(user_id, is_anonymous): the caller's limits, for GET /v1/usage
-- ----------------------------------------------------------------------------
-- A dry-run admission of a `default` request, reduced to what describes the user:
-- tier, windows, tokens, spend, warnings. Reserves and records nothing.
create function tollgate.usage(user_id uuid, is_anonymous boolean default false)
returns jsonb
language sql
volatile
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'user_id', usage.user_id,
    'tier', a -> 'tier',
    'windows', a -> 'windows',
    'tokens', a -> 'tokens',
    'spend', a -> 'spend',
    'warnings', a -> 'warnings',
    'error', case when a ->> 'code' = 'invalid_request' then a -> 'message' end)
  from tollgate.admit(jsonb_build_object(
    'request_id', gen_random_uuid(),
    'user_id', usage.user_id,
    'is_anonymous', coalesce(usage.is_anonymous, false),
    'model', 'usage',
    'estimated_cost_usd', 0,
    'dry_run', true)) as a
$$;
comment on function tollgate.usage(uuid, boolean) is
  'The user''s tier, windows (remaining, reset), token quotas and month-to-date spend, without reserving anything (GET /v1/usage). Called by the ai function as postgres or service_role.';
revoke all on function tollgate.usage(uuid, boolean) from public, anon, authenticated;
grant execute on function tollgate.usage(uuid, boolean) to service_role;

-- ----------------------------------------------------------------------------
-- tollgate.models_for(feature): the models a client may ask for (GET /v1/models)
-- ----------------------------------------------------------------------------
-- The feature's allowed_models when it restricts them; otherwise every model with a
-- route. (A model without a route is still admitted, on its provider's default
-- route; this lists the ones the operator configured.) Unknown feature: empty.
create function tollgate.models_for(feature text)
returns text[]
language sql
stable
security definer
set search_path = ''
as $$
  select case
    when f.name is null then '{}'::text[]
    when f.allowed_models is not null then f.allowed_models
    else (select coalesce(array_agg(r.model order by r.model), '{}') from tollgate.routes as r)
  end
  from (select) as one
  left join tollgate.features as f on f.name = models_for.feature
$$;
comment on function tollgate.models_for(text) is
  'The models a client may request for a feature (its allowed_models, else every configured route), for GET /v1/models. Called by the ai function as postgres or service_role.';
revoke all on function tollgate.models_for(text) from public, anon, authenticated;
grant execute on function tollgate.models_for(text) to service_role;
