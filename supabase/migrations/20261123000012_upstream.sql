-- ============================================================================
-- Tollgate 12: upstream discipline — provider keys, headroom, the priority queue,
-- load shedding (seed 003)
--
-- Limits on our own users (admission) say whether a request MAY run; this says
-- whether a PROVIDER can take it now, and who goes first when it cannot.
--
--   Keys       several per provider, from the function's secrets: `<NAME>_API_KEY`
--              (label `primary`) and `<NAME>_API_KEY_<LABEL>`. The database knows a
--              label and a fingerprint, never the key. Each has an optional daily
--              budget and expiry date; a key that answers 401/403 is marked dead by
--              settlement (the function has already failed over to the next key).
--   Headroom   per key: the provider's rate-limit headers as settlement last saw
--              them (when they run low), and configured ceilings (requests and
--              tokens per minute, requests in flight) for providers that send none.
--              Three consecutive 429s for a provider and model open its circuit
--              breaker (traffic goes to the route's fallback) and raise an alert
--              (tollgate.record_attempts).
--   The queue  when the primary provider has no headroom, admit() answers `queued`
--              with a place in tollgate.upstream_queue, and the function asks again
--              every poll interval with the same request id. A request is granted
--              when it is among the first N waiting (N = the headroom free), ordered
--              by effective rank — its class's rank (critical 0, normal 1, batch 2,
--              background 3) minus one per `queue_aging_seconds` waited — then by
--              arrival. Past its class's max wait it gets 429 `queue_timeout`.
--   Shedding   when the provider's queue is deeper than a class's
--              `shed_queue_depth`, background then batch requests are refused
--              (`load_shed`) and normal ones downgraded to their route's cheaper
--              model; critical ones always queue on the best model.
--
-- COST WHEN THERE IS NO CONTENTION. admit() reads each route step's first usable
-- key in its route read and calls tollgate.upstream_admission() only when the
-- primary provider is "guarded": a key with a ceiling, a recorded low headroom,
-- or someone waiting in its queue. Otherwise nothing more is read or written.
-- Settlement writes a key's row only when something changed (low headers, a dead
-- key), and adds the call to the key's daily spend.
--
-- Providers report rate limits per model (OpenAI) or model class (Anthropic); a
-- key's recorded headroom is the last LOW report of any model on it, which errs on
-- the side of holding back.
--
-- EXACT CEILINGS. Near a limit, grants on a provider serialize on an exclusive
-- advisory lock of the provider, held to admit()'s commit; far from every limit they
-- share it (see upstream_admission for why that is still exact). A call holds a slot
-- for as long as its api_usage row is `reserved` with holds_upstream_slot, so in
-- flight is a count that settlement, expiry and a refused admission's undo all keep
-- exact without touching the key. Concurrency cannot start more than max_in_flight.
-- (Recorded headers are the provider's estimate, not a ceiling: grants made under
-- the shared lock do not count against them; the next response's headers do.)
-- Lock order: the user's lock, the provider's lock, provider_keys rows, then the
-- rest of admit()'s.
-- ============================================================================

-- ----------------------------------------------------------------------------
-- Settings (one row)
-- ----------------------------------------------------------------------------
create table tollgate.upstream_settings (
  id boolean primary key default true check (id),
  queue_aging_seconds integer not null default 10 check (queue_aging_seconds between 1 and 3600),
  queue_poll_ms integer not null default 250 check (queue_poll_ms between 20 and 5000),
  queue_ticket_ttl_seconds integer not null default 5 check (queue_ticket_ttl_seconds between 1 and 60),
  low_headroom_percent integer not null default 20 check (low_headroom_percent between 0 and 100),
  rate_limit_streak integer not null default 3 check (rate_limit_streak between 1 and 100),
  key_expiry_warning_days integer not null default 14 check (key_expiry_warning_days between 0 and 365),
  updated_at timestamptz not null default now()
);
comment on table tollgate.upstream_settings is
  'Upstream discipline settings (one row): the queue''s aging and polling, when header headroom counts as low, the 429 streak, key expiry warnings.';
comment on column tollgate.upstream_settings.id is 'Always true: the table holds exactly one row.';
comment on column tollgate.upstream_settings.queue_aging_seconds is
  'A waiting request moves up one priority class per this many seconds waited (starvation prevention).';
comment on column tollgate.upstream_settings.queue_poll_ms is 'How often a queued request asks again (the function waits this long between admit() calls).';
comment on column tollgate.upstream_settings.queue_ticket_ttl_seconds is
  'A ticket not renewed by a poll for this long belongs to a caller that is gone: it no longer counts.';
comment on column tollgate.upstream_settings.low_headroom_percent is
  'Settlement records a key''s rate-limit headers when the remaining requests or tokens are at or below this percent of the limit; above it the provider has room and admission counts nothing.';
comment on column tollgate.upstream_settings.rate_limit_streak is
  'Consecutive 429s from a provider and model that raise an alert (its circuit breaker opens at its own failure_threshold).';
comment on column tollgate.upstream_settings.key_expiry_warning_days is 'Alert this many days before a key''s expires_on.';
comment on column tollgate.upstream_settings.updated_at is 'When the row was last changed.';

insert into tollgate.upstream_settings (id) values (true);

create trigger upstream_settings_touch before update on tollgate.upstream_settings
  for each row execute function tollgate.touch_updated_at();

-- ----------------------------------------------------------------------------
-- Priority classes: rank, maximum wait, shedding depth
-- ----------------------------------------------------------------------------
create table tollgate.priority_classes (
  priority text primary key check (priority in ('critical', 'normal', 'batch', 'background')),
  rank smallint not null unique check (rank between 0 and 3),
  max_wait_seconds integer not null check (max_wait_seconds between 0 and 120),
  shed_queue_depth integer check (shed_queue_depth >= 0),
  updated_at timestamptz not null default now()
);
comment on table tollgate.priority_classes is
  'How each feature priority waits for provider capacity (seed 003): lower rank goes first; no one waits past max_wait_seconds (the edge runtime''s 150 s wall clock bounds it); past shed_queue_depth waiting requests, background and batch requests are refused and normal ones downgraded to the route''s cheaper model.';
comment on column tollgate.priority_classes.priority is 'A feature priority (tollgate.features.priority).';
comment on column tollgate.priority_classes.rank is '0 goes first. Aging lowers a waiting request''s rank by one per queue_aging_seconds.';
comment on column tollgate.priority_classes.max_wait_seconds is
  'Longest wait in the queue; then 429 queue_timeout with a Retry-After. The function also stops waiting at half its deadline (TOLLGATE_DEADLINE_MS, 120 s), keeping the rest for the call: the edge runtime allows 150 s in all.';
comment on column tollgate.priority_classes.shed_queue_depth is
  'Queue depth (requests waiting for the provider) from which this class is shed: refused (background, batch) or downgraded (normal). Null: never.';
comment on column tollgate.priority_classes.updated_at is 'When the row was last changed.';

insert into tollgate.priority_classes (priority, rank, max_wait_seconds, shed_queue_depth) values
  ('critical', 0, 10, null),
  ('normal', 1, 20, 50),
  ('batch', 2, 45, 25),
  ('background', 3, 60, 10);

create trigger priority_classes_touch before update on tollgate.priority_classes
  for each row execute function tollgate.touch_updated_at();

-- ----------------------------------------------------------------------------
-- Provider keys: configuration and live state, one row per key
-- ----------------------------------------------------------------------------
-- One row carries both what the operator sets and what admission and settlement
-- keep, so that a grant is a single conditional UPDATE. fillfactor leaves room for
-- HOT updates: the row changes often when a ceiling is configured.
create table tollgate.provider_keys (
  provider text not null check (provider ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
  label text not null check (label ~ '^[a-z0-9_]{1,32}$'),
  fingerprint text not null check (fingerprint ~ '^sha256:[0-9a-f]{16}$'),
  position smallint not null default 1 check (position between 1 and 100),
  -- Set by the operator.
  daily_budget_usd numeric(14, 6) check (daily_budget_usd >= 0),
  expires_on date,
  requests_per_minute integer check (requests_per_minute > 0),
  tokens_per_minute bigint check (tokens_per_minute > 0),
  max_in_flight integer check (max_in_flight > 0),
  note text,
  -- Kept by the gateway.
  state text not null default 'active' check (state in ('active', 'dead')),
  dead_since timestamptz,
  dead_status smallint,
  minute_start timestamptz,
  minute_requests integer not null default 0,
  minute_tokens bigint not null default 0,
  previous_minute_requests integer not null default 0,
  previous_minute_tokens bigint not null default 0,
  observed_at timestamptz,
  remaining_requests integer,
  remaining_tokens bigint,
  requests_reset_at timestamptz,
  tokens_reset_at timestamptz,
  requests_since_observed integer not null default 0,
  tokens_since_observed bigint not null default 0,
  registered_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (provider, label)
) with (fillfactor = 50);
comment on table tollgate.provider_keys is
  'Provider API keys as the gateway knows them: a label and a fingerprint (the key itself is a function secret, never stored), the operator''s daily budget, expiry and ceilings, and live state (dead, minute counters, rate-limit headroom). Rows appear when a function first serves with the key. Edit the operator columns with SQL; tollgate.revive_provider_key() puts a dead key back.';
comment on column tollgate.provider_keys.provider is 'Provider id, as in routes.';
comment on column tollgate.provider_keys.label is '`primary` for <NAME>_API_KEY, `<label>` for <NAME>_API_KEY_<LABEL>.';
comment on column tollgate.provider_keys.fingerprint is 'sha256:<first 16 hex of the key''s SHA-256>: tells keys apart (a rotated secret has a new one), reveals nothing.';
comment on column tollgate.provider_keys.position is 'Order in which keys are used (primary first).';
comment on column tollgate.provider_keys.daily_budget_usd is 'Spend per UTC day after which the key is not used (and an alert says so). Null: no budget.';
comment on column tollgate.provider_keys.expires_on is 'The day the key stops working. Not used from that day; an alert key_expiry_warning_days before.';
comment on column tollgate.provider_keys.requests_per_minute is 'Ceiling for providers that send no rate-limit headers. Null: none.';
comment on column tollgate.provider_keys.tokens_per_minute is 'Ceiling in tokens (input + max output, as providers count) per minute. Null: none.';
comment on column tollgate.provider_keys.max_in_flight is 'Most calls running on this key at once. Null: no limit.';
comment on column tollgate.provider_keys.note is 'Notes for people (who owns the key, where it is rotated).';
comment on column tollgate.provider_keys.state is 'active, or dead: the provider refused it (401/403). Dead keys are skipped until rotated or revived.';
comment on column tollgate.provider_keys.dead_since is 'When the key was refused.';
comment on column tollgate.provider_keys.dead_status is 'The HTTP status the provider refused it with.';
comment on column tollgate.provider_keys.minute_start is 'Start of the current one-minute counting window (ceilings only).';
comment on column tollgate.provider_keys.minute_requests is 'Requests granted in the current minute window.';
comment on column tollgate.provider_keys.minute_tokens is 'Tokens granted in the current minute window.';
comment on column tollgate.provider_keys.previous_minute_requests is 'Requests of the previous minute window (weighted into the sliding estimate).';
comment on column tollgate.provider_keys.previous_minute_tokens is 'Tokens of the previous minute window.';
comment on column tollgate.provider_keys.observed_at is 'When the recorded rate-limit headers arrived. Null: headroom is not low (nothing recorded).';
comment on column tollgate.provider_keys.remaining_requests is 'x-ratelimit-remaining-requests (anthropic-ratelimit-requests-remaining) as last recorded.';
comment on column tollgate.provider_keys.remaining_tokens is 'Remaining tokens as last recorded.';
comment on column tollgate.provider_keys.requests_reset_at is 'When the provider''s request allowance refills.';
comment on column tollgate.provider_keys.tokens_reset_at is 'When the provider''s token allowance refills.';
comment on column tollgate.provider_keys.requests_since_observed is 'Requests granted since the headers were recorded (they use up remaining_requests).';
comment on column tollgate.provider_keys.tokens_since_observed is 'Tokens granted since the headers were recorded.';
comment on column tollgate.provider_keys.registered_at is 'When a function first used this key (this fingerprint).';
comment on column tollgate.provider_keys.updated_at is 'When the row was last changed.';

-- ----------------------------------------------------------------------------
-- Spend per key and day (sharded like usage_daily: settlements do not wait on
-- each other)
-- ----------------------------------------------------------------------------
create table tollgate.provider_key_usage_daily (
  provider text not null,
  label text not null,
  day date not null,
  shard smallint not null,
  calls bigint not null default 0,
  input_tokens bigint not null default 0,
  output_tokens bigint not null default 0,
  cost_usd numeric(18, 6) not null default 0,
  updated_at timestamptz not null default now(),
  primary key (provider, label, day, shard)
);
comment on table tollgate.provider_key_usage_daily is
  'Calls, tokens and cost per provider key and UTC day (in shards; sum them), added by settlement for the key that answered. Read through public.provider_key_spend.';
comment on column tollgate.provider_key_usage_daily.provider is 'Provider id (tollgate.provider_keys.provider).';
comment on column tollgate.provider_key_usage_daily.label is 'Key label (tollgate.provider_keys.label).';
comment on column tollgate.provider_key_usage_daily.day is 'UTC day of the call''s created_at.';
comment on column tollgate.provider_key_usage_daily.shard is 'Contention shard (0..15) of the session that wrote the row.';
comment on column tollgate.provider_key_usage_daily.calls is 'Calls answered with this key.';
comment on column tollgate.provider_key_usage_daily.input_tokens is 'Input tokens of those calls.';
comment on column tollgate.provider_key_usage_daily.output_tokens is 'Output tokens of those calls.';
comment on column tollgate.provider_key_usage_daily.cost_usd is 'Cost of those calls in USD (what the key''s daily budget counts).';
comment on column tollgate.provider_key_usage_daily.updated_at is 'When the row was last changed.';

-- ----------------------------------------------------------------------------
-- The queue: requests waiting for provider capacity
-- ----------------------------------------------------------------------------
-- UNLOGGED: tickets live seconds and are renewed by every poll; after a crash the
-- table is empty and waiting callers simply queue again.
create unlogged table tollgate.upstream_queue (
  request_id uuid primary key,
  provider text not null,
  priority text not null,
  rank smallint not null,
  user_id uuid not null,
  enqueued_at timestamptz not null,
  wait_until timestamptz not null,
  last_seen_at timestamptz not null
);
create index upstream_queue_provider_idx on tollgate.upstream_queue (provider, enqueued_at);
comment on table tollgate.upstream_queue is
  'Requests waiting for a provider''s capacity, one ticket per request id (admit() writes them; a poll renews last_seen_at; a grant, a timeout, shedding or tollgate.leave_queue() removes them). Live tickets only count.';
comment on column tollgate.upstream_queue.request_id is 'The waiting request (admit()''s request_id): one ticket each.';
comment on column tollgate.upstream_queue.provider is 'The provider it waits for (its route''s primary step).';
comment on column tollgate.upstream_queue.priority is 'Its feature''s priority (tollgate.priority_classes).';
comment on column tollgate.upstream_queue.rank is 'The priority''s rank when it arrived; aging lowers it by one per queue_aging_seconds waited.';
comment on column tollgate.upstream_queue.user_id is 'The user of the request.';
comment on column tollgate.upstream_queue.enqueued_at is 'When it first queued: orders requests of one effective rank, and ages them.';
comment on column tollgate.upstream_queue.wait_until is 'enqueued_at plus its class''s max_wait_seconds: past it, 429 queue_timeout.';
comment on column tollgate.upstream_queue.last_seen_at is 'Its last poll. Not renewed for queue_ticket_ttl_seconds: the caller is gone and the ticket no longer counts.';

alter table tollgate.upstream_settings enable row level security;
alter table tollgate.priority_classes enable row level security;
alter table tollgate.provider_keys enable row level security;
alter table tollgate.provider_key_usage_daily enable row level security;
alter table tollgate.upstream_queue enable row level security;
create policy "No client access" on tollgate.upstream_settings as restrictive for all to anon, authenticated
  using (false) with check (false);
create policy "No client access" on tollgate.priority_classes as restrictive for all to anon, authenticated
  using (false) with check (false);
create policy "No client access" on tollgate.provider_keys as restrictive for all to anon, authenticated
  using (false) with check (false);
create policy "No client access" on tollgate.provider_key_usage_daily as restrictive for all to anon, authenticated
  using (false) with check (false);
create policy "No client access" on tollgate.upstream_queue as restrictive for all to anon, authenticated
  using (false) with check (false);
revoke all on tollgate.upstream_settings, tollgate.priority_classes, tollgate.provider_keys,
  tollgate.provider_key_usage_daily, tollgate.upstream_queue from public, anon, authenticated;
grant select on tollgate.upstream_settings, tollgate.priority_classes, tollgate.provider_keys,
  tollgate.provider_key_usage_daily, tollgate.upstream_queue to service_role;

-- New alert kinds (see budget_alerts): key and provider trouble.
alter table tollgate.budget_alerts drop constraint budget_alerts_kind_check;
alter table tollgate.budget_alerts add constraint budget_alerts_kind_check check (kind in (
  'budget', 'throttle', 'throttle_cleared', 'anomaly', 'anomaly_cleared', 'user_anomaly', 'user_anomaly_cleared',
  'provider_rate_limited', 'provider_key_dead', 'provider_key_budget', 'provider_key_expiring'));

-- The key helpers below run in every admission that reads keys: PL/pgSQL, because a
-- SQL function with a SET clause is never inlined and is planned again on every call,
-- while PL/pgSQL keeps its plans for the session.

-- ----------------------------------------------------------------------------
-- tollgate.key_headroom(key, in_flight, estimated_tokens, at): calls it can start
-- ----------------------------------------------------------------------------
-- The least of what each limit allows (null: no limit applies): in-flight ceiling,
-- sliding-minute ceilings (upstash's two-window estimate: the previous minute
-- weighted by how much of it still overlaps), and the provider's own headers until
-- their reset. A request needing more tokens than remain gets 0.
create function tollgate.key_headroom(
  k tollgate.provider_keys,
  in_flight bigint,
  estimated_tokens integer,
  at timestamptz
)
returns integer
language plpgsql
stable
set search_path = ''
as $$
declare
  v_elapsed numeric;
  v_requests numeric := 0;
  v_tokens numeric := 0;
begin
  if k.minute_start is not null and at < k.minute_start + interval '2 minutes' then
    v_elapsed := extract(epoch from at - k.minute_start) % 60 / 60;
    if at >= k.minute_start + interval '1 minute' then
      -- The window has moved on: the counted minute is now the previous one.
      v_requests := k.minute_requests * (1 - v_elapsed);
      v_tokens := k.minute_tokens * (1 - v_elapsed);
    else
      v_requests := k.minute_requests + k.previous_minute_requests * (1 - v_elapsed);
      v_tokens := k.minute_tokens + k.previous_minute_tokens * (1 - v_elapsed);
    end if;
  end if;
  if v_tokens + estimated_tokens > k.tokens_per_minute
    or (k.tokens_reset_at > at and k.remaining_tokens - k.tokens_since_observed < estimated_tokens) then
    return 0;
  end if;
  return greatest(0, least(
    k.max_in_flight - in_flight,
    floor(k.requests_per_minute - v_requests),
    case when k.requests_reset_at > at then k.remaining_requests - k.requests_since_observed end,
    2147483647));
end;
$$;
comment on function tollgate.key_headroom(tollgate.provider_keys, bigint, integer, timestamptz) is
  'Internal: how many calls of estimated_tokens the key can start at `at` with in_flight running, the least over its ceilings and recorded headers.';
revoke all on function tollgate.key_headroom(tollgate.provider_keys, bigint, integer, timestamptz)
  from public, anon, authenticated;

-- Calls holding a slot on a key: reservations in flight (see EXACT CEILINGS).
create function tollgate.key_in_flight(provider text, label text)
returns bigint
language plpgsql
stable
set search_path = ''
as $$
begin
  return (
    select count(*) from public.api_usage as u
    where u.status = 'reserved' and u.holds_upstream_slot
      and u.provider = key_in_flight.provider and u.provider_key = key_in_flight.label);
end;
$$;
comment on function tollgate.key_in_flight(text, text) is
  'Internal: calls running on a key under a max_in_flight ceiling (reservations holding its slot).';
revoke all on function tollgate.key_in_flight(text, text) from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- tollgate.key_usable(key, at): may the key take calls at all today
-- ----------------------------------------------------------------------------
create function tollgate.key_usable(k tollgate.provider_keys, at timestamptz)
returns boolean
language plpgsql
stable
set search_path = ''
as $$
begin
  if k.state <> 'active' or k.expires_on <= (at at time zone 'UTC')::date then
    return false;
  end if;
  return k.daily_budget_usd is null or coalesce((
    select sum(d.cost_usd) from tollgate.provider_key_usage_daily as d
    where d.provider = k.provider and d.label = k.label and d.day = (at at time zone 'UTC')::date), 0)
    < k.daily_budget_usd;
end;
$$;
comment on function tollgate.key_usable(tollgate.provider_keys, timestamptz) is
  'Internal: the key is active, not expired and under its daily budget.';
revoke all on function tollgate.key_usable(tollgate.provider_keys, timestamptz) from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- tollgate.provider_room(provider, estimated_tokens, at): a provider's headroom now
-- ----------------------------------------------------------------------------
-- free: calls its usable keys can start in all; best_key: the key with the most room
-- (first by position on a tie), and whether a call on it holds an in-flight slot;
-- roomy: that key is farther from its limits than every database connection could grant
-- at once in one transaction (as many as an admission batch holds: max_batch_size) and
-- counts no per-minute ceiling (see upstream_admission).
create function tollgate.provider_room(
  provider text,
  estimated_tokens integer,
  at timestamptz,
  out free bigint,
  out best_key text,
  out best_holds_slot boolean,
  out roomy boolean
)
language plpgsql
stable
set search_path = ''
as $$
begin
  with headroom as (
    select k.label, k.position, k.max_in_flight is not null as slot,
      k.requests_per_minute is not null or k.tokens_per_minute is not null as counted,
      tollgate.key_headroom(k,
        case when k.max_in_flight is not null then tollgate.key_in_flight(k.provider, k.label) else 0 end,
        estimated_tokens, at) as room
    from tollgate.provider_keys as k
    where k.provider = provider_room.provider
      -- key_usable() decides; a key with no expiry and no budget needs no call (as in
      -- admit()'s route read).
      and case when k.expires_on is null and k.daily_budget_usd is null then k.state = 'active'
        else tollgate.key_usable(k, at) end
  ),
  best as (
    select h.* from headroom as h where h.room > 0 order by h.room desc, h.position limit 1
  )
  select coalesce((select sum(h.room) from headroom as h), 0), b.label, b.slot,
    coalesce(
      not b.counted and b.room >= current_setting('max_connections')::integer * tollgate.max_batch_size(),
      false)
  into free, best_key, best_holds_slot, roomy
  from (select) as one
  left join best as b on true;
end;
$$;
comment on function tollgate.provider_room(text, integer, timestamptz) is
  'Internal: a provider''s headroom over its usable keys, its roomiest key, and whether that key is far enough from its limits for a grant without the exclusive lock.';
revoke all on function tollgate.provider_room(text, integer, timestamptz) from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- tollgate.upstream_admission(...): grant, queue, shed or time out — admit()'s
-- step for a guarded provider
-- ----------------------------------------------------------------------------
-- Returns {decision, key, holds_slot, queue, retry_after_seconds}; decision is
--   go        granted on `key` (holds_slot: the key has an in-flight ceiling)
--   queued    wait: queue {provider, position, depth, poll_after_ms, wait_until}
--   shed      background or batch while the queue is past their shed depth
--   timeout   waited past the class's max wait
-- (Normal requests are downgraded before routing: see admit().)
create function tollgate.upstream_admission(
  request_id uuid,
  user_id uuid,
  provider text,
  priority text,
  estimated_tokens integer,
  at timestamptz
)
returns jsonb
language plpgsql
volatile
set search_path = ''
as $$
declare
  v_settings tollgate.upstream_settings;
  v_class tollgate.priority_classes;
  v_ticket tollgate.upstream_queue;
  v_my_rank integer;
  v_ahead integer;
  v_depth integer;
  v_lock bigint;
  v_held text; -- ',a=…,b=…,': the providers whose lock this transaction holds in share mode
  v_at integer;
  v_read text; -- what v_held says of this provider's read: 'key:holds_slot:grants', or '-'
  v_shared boolean;
  v_hints text; -- ',a,b,': the providers this session's latest reads found roomy
  v_hinted boolean;
  v_room record;
  v_free bigint;
  v_key text;
  v_slot boolean;
  v_wait integer;
begin
  -- The providers whose lock this transaction holds in share mode, each with its read
  -- (see below): ',provider=key:holds_slot:grants,', or ',provider=-,' when the read
  -- found too little room or the queue was not empty.
  v_lock := hashtextextended('tollgate.upstream:' || provider, 7104);
  v_held := coalesce(nullif(current_setting('tollgate.upstream_shared', true), ''), ',');
  v_at := position(',' || provider || '=' in v_held);
  v_shared := v_at > 0;
  if v_shared then
    -- Taken out of the list, and put back below with what this request did.
    v_read := split_part(substr(v_held, v_at + length(provider) + 2), ',', 1);
    v_held := overlay(v_held placing '' from v_at + 1 for length(provider) + length(v_read) + 2);
  end if;
  select * into v_ticket from tollgate.upstream_queue as q where q.request_id = upstream_admission.request_id;

  -- A batch's later requests on a provider whose lock it holds in share mode are
  -- granted on its read while that read serves, without reading the queue again: a
  -- read is kept only while nobody waits (a request of the batch that finds someone
  -- waiting marks it '-'), so they go as if they found nobody waiting. A ticket added
  -- since can only come from another shared holder whose read found less room (an
  -- exclusive holder waits for this transaction's lock); that request asks again at its
  -- next poll, as it would had it come a moment later. A request with a ticket of its
  -- own takes the whole step, which ranks it and removes the ticket.
  if v_shared and v_read <> '-' and v_ticket.request_id is null
    and split_part(v_read, ':', 3)::integer < tollgate.max_batch_size()
  then
    v_depth := 0;
  elsif v_ticket.request_id is null
    and not exists (select from tollgate.upstream_queue as q where q.provider = upstream_admission.provider)
  then
    -- Nobody waits for this provider (its queue stays empty as long as it has room), so
    -- nobody is ahead of a request without a ticket. The queue's settings and the
    -- request's class matter only should it find no room: they are read below, then.
    v_ahead := 0;
    v_depth := 0;
  else
    select * into v_settings from tollgate.upstream_settings;
    select * into v_class from tollgate.priority_classes as c where c.priority = upstream_admission.priority;

    -- Who is ahead: live tickets by effective rank (the class's, minus aging), then
    -- arrival. A request without a ticket arrives now.
    v_my_rank := greatest(0, coalesce(v_ticket.rank, v_class.rank)
      - floor(extract(epoch from at - coalesce(v_ticket.enqueued_at, at)) / v_settings.queue_aging_seconds))::integer;
    select
      count(*) filter (where (
        greatest(0, q.rank - floor(extract(epoch from at - q.enqueued_at) / v_settings.queue_aging_seconds)),
        q.enqueued_at, q.request_id) < (v_my_rank, coalesce(v_ticket.enqueued_at, at), upstream_admission.request_id)),
      count(*)
    into v_ahead, v_depth
    from tollgate.upstream_queue as q
    where q.provider = upstream_admission.provider
      and q.request_id <> upstream_admission.request_id
      and q.last_seen_at > at - make_interval(secs => v_settings.queue_ticket_ttl_seconds);
  end if;

  -- Far from every limit, grants need not wait for each other. With nobody waiting and
  -- a key farther from its limits than every database connection could grant without
  -- seeing the others (max_batch_size() each, a batch's most: see provider_room), no
  -- interleaving of such grants can pass a ceiling: they hold the provider's lock in
  -- SHARE mode, read the room under it, and write nothing — the queue's cost without
  -- contention. Every other grant takes the lock EXCLUSIVE, so it runs alone and
  -- sees every grant committed before it (READ COMMITTED). Per-minute ceilings count each
  -- grant, so they always go the exclusive way. A shared holder never asks for the
  -- exclusive lock (two such upgrades would deadlock): should its read under the lock
  -- find less room, or someone waiting, it and the later requests of its batch wait in
  -- the queue for one poll instead.
  --
  -- One read under the lock serves max_batch_size() grants of the transaction, on the
  -- key it found: the margin counts that many grants from every connection, this one's
  -- included (at any moment, what has been granted since the latest such read comes
  -- from the transactions that had read by then, and exclusive grants wait for them).
  -- The read counts the key's calls in flight, the dearest part of the step.
  --
  -- Which way to take the lock follows what this session's latest read of the room
  -- found, not a read of its own before the lock: a grant must read under the lock
  -- anyway, so every path reads once. The providers found roomy are noted in a session
  -- setting, ',provider,' each (only a hint: either mode is exact, and a session that
  -- finds its hint wrong under the shared lock makes that request wait one poll, as
  -- above; a session's first grant on a provider takes the lock exclusive).
  v_hints := coalesce(nullif(current_setting('tollgate.upstream_roomy', true), ''), ',');
  v_hinted := position(',' || provider || ',' in v_hints) > 0;
  if not v_shared and v_depth = 0 and v_hinted then
    perform pg_advisory_xact_lock_shared(v_lock);
    v_shared := true;
  elsif not v_shared then
    perform pg_advisory_xact_lock(v_lock);
  end if;
  -- Read under the lock: an exclusive holder always; a shared one once, and again after
  -- max_batch_size() grants.
  if not v_shared or v_read is null
    or (v_read <> '-' and split_part(v_read, ':', 3)::integer >= tollgate.max_batch_size())
  then
    v_room := tollgate.provider_room(provider, estimated_tokens, at);
    if v_room.roomy <> v_hinted then
      perform set_config('tollgate.upstream_roomy',
        case when v_room.roomy then v_hints || provider || ',' else replace(v_hints, ',' || provider || ',', ',') end,
        false);
    end if;
    if v_shared then
      v_read := case when v_room.roomy then v_room.best_key || ':' || v_room.best_holds_slot || ':0' else '-' end;
    end if;
  end if;
  if v_shared then
    if v_depth > 0 then
      v_read := '-';
    elsif v_read <> '-' then
      v_key := split_part(v_read, ':', 1);
      v_slot := split_part(v_read, ':', 2)::boolean;
      v_read := v_key || ':' || v_slot || ':' || (split_part(v_read, ':', 3)::integer + 1);
    end if;
    perform set_config('tollgate.upstream_shared', v_held || provider || '=' || v_read || ',', true);
    if v_read <> '-' then
      if v_ticket.request_id is not null then
        delete from tollgate.upstream_queue as q where q.request_id = upstream_admission.request_id;
      end if;
      return jsonb_build_object('decision', 'go', 'key', v_key, 'holds_slot', v_slot);
    end if;
    v_free := 0; -- less room than it seemed, or someone waiting: one poll in the queue (see above)
  else
    v_free := v_room.free;
    v_key := v_room.best_key;
    v_slot := v_room.best_holds_slot;
  end if;

  if v_ahead < v_free then
    -- Our turn. The minute counters feed the per-minute ceilings; the "since
    -- observed" counters use up the provider's reported remaining allowance.
    update tollgate.provider_keys as k
    set previous_minute_requests = case when k.minute_start is null or at < k.minute_start + interval '1 minute'
          then k.previous_minute_requests
          when at < k.minute_start + interval '2 minutes' then k.minute_requests else 0 end,
        previous_minute_tokens = case when k.minute_start is null or at < k.minute_start + interval '1 minute'
          then k.previous_minute_tokens
          when at < k.minute_start + interval '2 minutes' then k.minute_tokens else 0 end,
        minute_requests = case when at < k.minute_start + interval '1 minute' then k.minute_requests + 1 else 1 end,
        minute_tokens = case when at < k.minute_start + interval '1 minute'
          then k.minute_tokens + estimated_tokens else estimated_tokens end,
        minute_start = case when at < k.minute_start + interval '1 minute' then k.minute_start
          when at < k.minute_start + interval '2 minutes' then k.minute_start + interval '1 minute'
          else at end,
        requests_since_observed = k.requests_since_observed + 1,
        tokens_since_observed = k.tokens_since_observed + estimated_tokens,
        updated_at = at
    where k.provider = upstream_admission.provider and k.label = v_key;
    delete from tollgate.upstream_queue as q where q.request_id = upstream_admission.request_id;
    return jsonb_build_object('decision', 'go', 'key', v_key, 'holds_slot', v_slot);
  end if;

  -- No room for us now: what follows depends on the queue's settings and the request's
  -- class (not read above when nobody was waiting).
  if v_settings.id is null then
    select * into v_settings from tollgate.upstream_settings;
    select * into v_class from tollgate.priority_classes as c where c.priority = upstream_admission.priority;
  end if;

  -- Shedding first (seed 003's order, by depth per class).
  if priority in ('background', 'batch') and v_depth >= v_class.shed_queue_depth then
    delete from tollgate.upstream_queue as q where q.request_id = upstream_admission.request_id;
    return jsonb_build_object('decision', 'shed', 'retry_after_seconds', 60, 'depth', v_depth);
  end if;

  -- When capacity is likely back, for an honest Retry-After.
  select greatest(1, ceil(least(
      extract(epoch from min(k.requests_reset_at) filter (where k.requests_reset_at > at) - at),
      extract(epoch from min(k.tokens_reset_at) filter (where k.tokens_reset_at > at) - at),
      case when bool_or(k.requests_per_minute is not null or k.tokens_per_minute is not null) then 60 end,
      case when bool_or(k.max_in_flight is not null) then 1 end)))::integer
  into v_wait
  from tollgate.provider_keys as k
  where k.provider = upstream_admission.provider;
  v_wait := coalesce(v_wait, 1);

  if v_ticket.request_id is not null and at >= v_ticket.wait_until then
    delete from tollgate.upstream_queue as q where q.request_id = upstream_admission.request_id;
    return jsonb_build_object('decision', 'timeout', 'retry_after_seconds', v_wait, 'depth', v_depth);
  end if;

  insert into tollgate.upstream_queue as q (
    request_id, provider, priority, rank, user_id, enqueued_at, wait_until, last_seen_at)
  values (upstream_admission.request_id, upstream_admission.provider, upstream_admission.priority, v_class.rank,
    upstream_admission.user_id, at, at + make_interval(secs => v_class.max_wait_seconds), at)
  on conflict on constraint upstream_queue_pkey do update set last_seen_at = excluded.last_seen_at
  returning q.* into v_ticket;
  return jsonb_build_object('decision', 'queued', 'retry_after_seconds', v_wait, 'queue', jsonb_build_object(
    'provider', provider,
    'position', v_ahead + 1,
    'depth', v_depth + 1,
    'poll_after_ms', v_settings.queue_poll_ms,
    'wait_until', v_ticket.wait_until));
end;
$$;
comment on function tollgate.upstream_admission(uuid, uuid, text, text, integer, timestamptz) is
  'Internal: admit()''s step for a provider under a ceiling, low on headroom or with a queue: grants a key, queues with aging, sheds or times out. See the header of the upstream migration.';
revoke all on function tollgate.upstream_admission(uuid, uuid, text, text, integer, timestamptz)
  from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- tollgate.leave_queue(request_id): a caller that gave up leaves at once
-- ----------------------------------------------------------------------------
create function tollgate.leave_queue(request_id uuid)
returns boolean
language sql
volatile
security definer
set search_path = ''
as $$
  with gone as (
    delete from tollgate.upstream_queue as q where q.request_id = leave_queue.request_id returning 1
  )
  select exists (select from gone);
$$;
comment on function tollgate.leave_queue(uuid) is
  'Removes a waiting request''s ticket (its caller disconnected). True when there was one. Called by the ai function.';
revoke all on function tollgate.leave_queue(uuid) from public, anon, authenticated;
grant execute on function tollgate.leave_queue(uuid) to service_role;

-- ----------------------------------------------------------------------------
-- tollgate.register_provider_keys(keys jsonb): the keys a function serves with
-- ----------------------------------------------------------------------------
-- [{provider, label, fingerprint, position}], sent once per function instance. A
-- label whose fingerprint changed is a rotated secret: a new key, active, with
-- fresh state (its operator settings stay).
create function tollgate.register_provider_keys(keys jsonb)
returns integer
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  if jsonb_typeof(keys) is distinct from 'array' or jsonb_path_exists(keys,
      '$[*] ? (@.type() != "object" || !(@.provider.type() == "string") || !(@.label.type() == "string")
        || !(@.fingerprint.type() == "string") || !(@.position.type() == "number"))') then
    raise exception 'tollgate.register_provider_keys: keys must be an array of {provider, label, fingerprint, position}'
      using errcode = '22023';
  end if;
  insert into tollgate.provider_keys as k (provider, label, fingerprint, position)
  select e.provider, e.label, e.fingerprint, e.position
  from jsonb_to_recordset(keys) as e (provider text, label text, fingerprint text, position smallint)
  order by e.provider, e.label
  on conflict (provider, label) do update
    set fingerprint = excluded.fingerprint,
        position = excluded.position,
        state = case when k.fingerprint = excluded.fingerprint then k.state else 'active' end,
        dead_since = case when k.fingerprint = excluded.fingerprint then k.dead_since end,
        dead_status = case when k.fingerprint = excluded.fingerprint then k.dead_status end,
        observed_at = case when k.fingerprint = excluded.fingerprint then k.observed_at end,
        minute_start = case when k.fingerprint = excluded.fingerprint then k.minute_start end,
        registered_at = case when k.fingerprint = excluded.fingerprint then k.registered_at else now() end,
        updated_at = now()
    where k.fingerprint is distinct from excluded.fingerprint or k.position is distinct from excluded.position;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
comment on function tollgate.register_provider_keys(jsonb) is
  'Registers the provider keys a function instance serves with ([{provider, label, fingerprint, position}]; never the key). A changed fingerprint (rotated secret) starts the label afresh. Returns the rows written. Called by the ai function.';
revoke all on function tollgate.register_provider_keys(jsonb) from public, anon, authenticated;
grant execute on function tollgate.register_provider_keys(jsonb) to service_role;

-- ----------------------------------------------------------------------------
-- tollgate.revive_provider_key(provider, label): put a dead key back by hand
-- ----------------------------------------------------------------------------
create function tollgate.revive_provider_key(provider text, label text)
returns boolean
language sql
volatile
security definer
set search_path = ''
as $$
  with revived as (
    update tollgate.provider_keys as k
    set state = 'active', dead_since = null, dead_status = null, updated_at = now()
    where k.provider = revive_provider_key.provider and k.label = revive_provider_key.label
    returning 1
  )
  select exists (select from revived);
$$;
comment on function tollgate.revive_provider_key(text, text) is
  'Operator: marks a key active again (after fixing it at the provider). Rotating the secret does this by itself.';
revoke all on function tollgate.revive_provider_key(text, text) from public, anon, authenticated;
grant execute on function tollgate.revive_provider_key(text, text) to service_role;

-- ----------------------------------------------------------------------------
-- tollgate.record_upstream(attempts, at): settlement's part
-- ----------------------------------------------------------------------------
-- Applies what a settled call's attempts tell about their keys: refused (dead +
-- alert), low rate-limit headers (recorded; a healthy report clears a low record).
-- settle() calls it only when an attempt says something of the kind (see there);
-- key rows are written in (provider, label) order, the lock order. (The key's daily
-- spend is settle()'s own upsert.)
create function tollgate.record_upstream(attempts jsonb, at timestamptz)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
  v_settings tollgate.upstream_settings;
  v_attempt record;
  v_key tollgate.provider_keys;
begin
  select * into v_settings from tollgate.upstream_settings;

  for v_attempt in
    select a.value ->> 'provider' as provider, a.value ->> 'key' as label, (a.value ->> 'status')::integer as status,
      (a.value ->> 'at')::timestamptz as seen_at, r.*,
      jsonb_typeof(a.value -> 'ratelimit') = 'object' as reported,
      -- Low: at or under low_headroom_percent of the limit, or nothing left (limit unknown).
      coalesce(r.remaining_requests * 100 <= r.limit_requests * v_settings.low_headroom_percent
        or r.remaining_tokens * 100 <= r.limit_tokens * v_settings.low_headroom_percent
        or r.remaining_requests = 0 or r.remaining_tokens = 0, false) as low
    from jsonb_array_elements(attempts) with ordinality as a
    cross join lateral jsonb_to_record(
      case when jsonb_typeof(a.value -> 'ratelimit') = 'object' then a.value -> 'ratelimit' end) as r (
        limit_requests numeric, remaining_requests numeric, reset_requests_ms numeric,
        limit_tokens numeric, remaining_tokens numeric, reset_tokens_ms numeric)
    where a.value ->> 'key' is not null
    order by 1, 2, a.ordinality
  loop
    select * into v_key from tollgate.provider_keys as k
    where k.provider = v_attempt.provider and k.label = v_attempt.label;
    continue when not found;

    if v_attempt.status in (401, 403) then
      update tollgate.provider_keys as k
      set state = 'dead', dead_since = at, dead_status = v_attempt.status, updated_at = at
      where k.provider = v_key.provider and k.label = v_key.label and k.state = 'active';
      if found then
        insert into tollgate.budget_alerts (dedup_key, kind, severity, message, details)
        values (format('key:%s:%s:dead:%s', v_key.provider, v_key.label, v_key.fingerprint), 'provider_key_dead',
          'investigate',
          format('The %s key "%s" (%s) was refused with HTTP %s: the gateway stopped using it. Rotate it, then set the new secret.',
            v_key.provider, v_key.label, v_key.fingerprint, v_attempt.status),
          jsonb_build_object('provider', v_key.provider, 'label', v_key.label, 'fingerprint', v_key.fingerprint,
            'status', v_attempt.status))
        on conflict (dedup_key) do nothing;
      end if;
    end if;

    -- Headers: recorded when low (or to clear a low record), newest observation wins.
    if v_attempt.reported and v_attempt.seen_at is not null
      and (v_key.observed_at is null or v_attempt.seen_at > v_key.observed_at)
      and (v_key.observed_at is not null or v_attempt.low) then
      update tollgate.provider_keys as k
      set observed_at = case when v_attempt.low then v_attempt.seen_at end,
          remaining_requests = case when v_attempt.low then v_attempt.remaining_requests::integer end,
          remaining_tokens = case when v_attempt.low then v_attempt.remaining_tokens::bigint end,
          requests_reset_at = case when v_attempt.low then v_attempt.seen_at
            + make_interval(secs => coalesce(v_attempt.reset_requests_ms, 60000) / 1000) end,
          tokens_reset_at = case when v_attempt.low then v_attempt.seen_at
            + make_interval(secs => coalesce(v_attempt.reset_tokens_ms, 60000) / 1000) end,
          requests_since_observed = 0,
          tokens_since_observed = 0,
          updated_at = at
      where k.provider = v_key.provider and k.label = v_key.label
        and (k.observed_at is null or v_attempt.seen_at > k.observed_at);
    end if;
  end loop;
end;
$$;
comment on function tollgate.record_upstream(jsonb, timestamptz) is
  'Internal: what a settled call''s attempts tell about their keys — refused (dead + alert), low rate-limit headers recorded (or a low record cleared). Called by settle() when there is something to record.';
revoke all on function tollgate.record_upstream(jsonb, timestamptz)
  from public, anon, authenticated;

-- ----------------------------------------------------------------------------
-- tollgate.check_provider_keys(): the keys' job (every minute)
-- ----------------------------------------------------------------------------
-- Alerts once per key and day when a key reached its daily budget (the key is out
-- of rotation until the next UTC day), and once per key and expiry date when the
-- key expires within key_expiry_warning_days. Also drops queue tickets whose
-- callers are long gone.
create function tollgate.check_provider_keys(as_of timestamptz default now())
returns integer
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_settings tollgate.upstream_settings;
  v_today date := (as_of at time zone 'UTC')::date;
  v_alerts integer := 0;
  v_count integer;
begin
  select * into v_settings from tollgate.upstream_settings;

  insert into tollgate.budget_alerts (dedup_key, kind, severity, period_start, spend_usd, limit_usd, message, details)
  select format('key:%s:%s:budget:%s', k.provider, k.label, v_today), 'provider_key_budget', 'investigate', v_today,
    s.spent, k.daily_budget_usd,
    format('The %s key "%s" (%s) spent %s USD today, its daily budget of %s USD: the gateway stopped using it until tomorrow (UTC). If that was not expected, the key may have leaked.',
      k.provider, k.label, k.fingerprint, tollgate.usd(s.spent), tollgate.usd(k.daily_budget_usd)),
    jsonb_build_object('provider', k.provider, 'label', k.label, 'fingerprint', k.fingerprint)
  from tollgate.provider_keys as k
  cross join lateral (
    select coalesce(sum(d.cost_usd), 0) as spent from tollgate.provider_key_usage_daily as d
    where d.provider = k.provider and d.label = k.label and d.day = v_today
  ) as s
  where k.daily_budget_usd is not null and s.spent >= k.daily_budget_usd
  on conflict (dedup_key) do nothing;
  get diagnostics v_count = row_count;
  v_alerts := v_alerts + v_count;

  insert into tollgate.budget_alerts (dedup_key, kind, severity, message, details)
  select format('key:%s:%s:expiring:%s', k.provider, k.label, k.expires_on), 'provider_key_expiring', 'investigate',
    case when k.expires_on <= v_today
      then format('The %s key "%s" (%s) expired on %s: the gateway no longer uses it. Set a new secret.',
        k.provider, k.label, k.fingerprint, k.expires_on)
      else format('The %s key "%s" (%s) expires on %s (in %s days): rotate it before then.',
        k.provider, k.label, k.fingerprint, k.expires_on, k.expires_on - v_today) end,
    jsonb_build_object('provider', k.provider, 'label', k.label, 'fingerprint', k.fingerprint,
      'expires_on', k.expires_on)
  from tollgate.provider_keys as k
  where k.expires_on is not null and k.expires_on - v_today <= v_settings.key_expiry_warning_days
  on conflict (dedup_key) do nothing;
  get diagnostics v_count = row_count;
  v_alerts := v_alerts + v_count;

  delete from tollgate.upstream_queue as q
  where q.last_seen_at < as_of - make_interval(secs => v_settings.queue_ticket_ttl_seconds);
  return v_alerts;
end;
$$;
comment on function tollgate.check_provider_keys(timestamptz) is
  'Job (every minute): alerts for keys at their daily budget or near expiry (each once), and clears abandoned queue tickets. Returns the alerts written.';
revoke all on function tollgate.check_provider_keys(timestamptz) from public, anon, authenticated;
grant execute on function tollgate.check_provider_keys(timestamptz) to service_role;

-- ----------------------------------------------------------------------------
-- Views for Studio: spend per key, and each key's headroom now
-- ----------------------------------------------------------------------------
create view public.provider_key_spend
with (security_invoker = true)
as
select
  d.day,
  d.provider,
  d.label,
  k.fingerprint,
  k.state,
  sum(d.calls)::bigint as calls,
  sum(d.input_tokens)::bigint as input_tokens,
  sum(d.output_tokens)::bigint as output_tokens,
  sum(d.cost_usd) as cost_usd,
  k.daily_budget_usd,
  round(sum(d.cost_usd) * 100 / nullif(k.daily_budget_usd, 0), 1) as percent_of_budget,
  k.expires_on
from tollgate.provider_key_usage_daily as d
left join tollgate.provider_keys as k on k.provider = d.provider and k.label = d.label
group by d.day, d.provider, d.label, k.fingerprint, k.state, k.daily_budget_usd, k.expires_on
order by d.day desc, cost_usd desc;
comment on view public.provider_key_spend is
  'Spend per provider key and UTC day, against the key''s daily budget. Studio only.';
comment on column public.provider_key_spend.day is 'UTC day.';
comment on column public.provider_key_spend.provider is 'Provider id.';
comment on column public.provider_key_spend.label is 'Key label.';
comment on column public.provider_key_spend.fingerprint is 'The key''s fingerprint (sha256:…), never the key.';
comment on column public.provider_key_spend.state is 'active or dead.';
comment on column public.provider_key_spend.calls is 'Calls answered with the key that day.';
comment on column public.provider_key_spend.input_tokens is 'Input tokens.';
comment on column public.provider_key_spend.output_tokens is 'Output tokens.';
comment on column public.provider_key_spend.cost_usd is 'Cost in USD.';
comment on column public.provider_key_spend.daily_budget_usd is 'The key''s daily budget. Null: none.';
comment on column public.provider_key_spend.percent_of_budget is 'cost_usd as a percent of the daily budget (one decimal). Null: no budget.';
comment on column public.provider_key_spend.expires_on is 'The key''s expiry date. Null: none set.';

create view public.provider_headroom
with (security_invoker = true)
as
select
  k.provider,
  k.label,
  k.fingerprint,
  k.state,
  tollgate.key_usable(k, now()) as usable,
  tollgate.key_headroom(k, tollgate.key_in_flight(k.provider, k.label), 0, now()) as free_calls,
  tollgate.key_in_flight(k.provider, k.label) as in_flight,
  k.max_in_flight,
  k.remaining_requests - k.requests_since_observed as remaining_requests,
  k.requests_reset_at,
  k.remaining_tokens - k.tokens_since_observed as remaining_tokens,
  k.tokens_reset_at,
  (select count(*) from tollgate.upstream_queue as q
    where q.provider = k.provider
      and q.last_seen_at > now() - make_interval(secs => (
        select us.queue_ticket_ttl_seconds from tollgate.upstream_settings as us))) as waiting
from tollgate.provider_keys as k
order by k.provider, k.position;
comment on view public.provider_headroom is
  'Each provider key now: usable, calls it can start (2147483647: no limit known), in flight, the provider''s remaining requests and tokens as last recorded (when low), requests waiting for the provider. Studio only.';
comment on column public.provider_headroom.provider is 'Provider id.';
comment on column public.provider_headroom.label is 'Key label.';
comment on column public.provider_headroom.fingerprint is 'The key''s fingerprint (sha256:…), never the key.';
comment on column public.provider_headroom.state is 'active or dead.';
comment on column public.provider_headroom.usable is 'Active, not expired and under its daily budget.';
comment on column public.provider_headroom.free_calls is 'Calls the key can start now (2147483647: no limit known).';
comment on column public.provider_headroom.in_flight is 'Calls holding one of its max_in_flight slots.';
comment on column public.provider_headroom.max_in_flight is 'The in-flight ceiling. Null: none.';
comment on column public.provider_headroom.remaining_requests is 'The provider''s remaining requests as last recorded, less those granted since. Null: not low.';
comment on column public.provider_headroom.requests_reset_at is 'When the provider''s request allowance refills.';
comment on column public.provider_headroom.remaining_tokens is 'The provider''s remaining tokens as last recorded, less those granted since. Null: not low.';
comment on column public.provider_headroom.tokens_reset_at is 'When the provider''s token allowance refills.';
comment on column public.provider_headroom.waiting is 'Requests waiting in the queue for this provider (live tickets: renewed within queue_ticket_ttl_seconds).';

-- The views run as their reader (security_invoker): Studio's postgres and service_role.
grant execute on function tollgate.key_usable(tollgate.provider_keys, timestamptz),
  tollgate.key_headroom(tollgate.provider_keys, bigint, integer, timestamptz), tollgate.key_in_flight(text, text)
  to service_role;
revoke all on public.provider_key_spend, public.provider_headroom from public, anon, authenticated, service_role;
grant select on public.provider_key_spend, public.provider_headroom to service_role;

select cron.schedule('tollgate-check-provider-keys', '* * * * *', 'select tollgate.check_provider_keys()');
