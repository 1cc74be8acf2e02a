-- ============================================================================
-- Tollgate 5/6: housekeeping jobs (pg_cron)
--
--   tollgate.expire_reservations()  every minute: reservations never settled become
--                                   `expired` ai_api_calls rows charged at their
--                                   estimate (nothing is lost, nothing is free).
--   tollgate.prune_api_usage()      every 5 minutes: drops window-log rows no window
--                                   can see any more, folds past days' rollup
--                                   shards, drops stale cache entries, old
--                                   rejections, old abandoned request ids and
--                                   old cron.job_run_details.
--
-- Both are safe to run at any time, late, twice, or concurrently with each other and
-- with admit()/settle(). Tests call them directly; they never wait for the clock.
-- Who may call them: postgres (pg_cron runs them as postgres) and service_role.
-- ============================================================================

-- ----------------------------------------------------------------------------
-- tollgate.expire_reservations(max_age, batch_size) returns integer
-- ----------------------------------------------------------------------------
-- max_age must exceed the longest an edge function can live (400 s wall clock on
-- paid plans; settlement runs in waitUntil within it), so a reservation older than
-- that can no longer be settled on time. Rows are claimed with FOR UPDATE SKIP
-- LOCKED: a settle() in progress keeps its row, and two concurrent runs split the
-- work. A settle() that arrives after expiry corrects the row (see settle()).
create function tollgate.expire_reservations(
  max_age interval default interval '10 minutes',
  batch_size integer default 10000
)
returns integer
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := clock_timestamp();
  v_rows public.api_usage[];
  v_deltas tollgate.usage_delta[];
begin
  if max_age is null or max_age < interval '400 seconds' then
    raise exception 'tollgate.expire_reservations: max_age must be at least 400 seconds, got %', max_age
      using errcode = '22023', hint = 'A younger reservation may still be settled by a running function.';
  end if;
  if batch_size is null or batch_size not between 1 and 1000000 then
    raise exception 'tollgate.expire_reservations: batch_size must be from 1 to 1,000,000'
      using errcode = '22023';
  end if;

  with claimed as (
    select u.request_id
    from public.api_usage as u
    where u.status = 'reserved' and u.created_at < v_now - max_age
    order by u.created_at
    limit batch_size
    for update skip locked
  ),
  expired as (
    update public.api_usage as u
    set status = 'expired',
        settled_at = v_now
    from claimed
    where u.request_id = claimed.request_id
    returning u.*
  )
  select array_agg(row(expired.*)::public.api_usage) into v_rows from expired;

  if v_rows is null then
    return 0;
  end if;

  -- Each becomes a call row charged at its estimate, then the rollups move the
  -- estimate from reserved to spent, exactly as a settlement would.
  with charged as (
    insert into public.ai_api_calls as c (
      created_at, user_id, feature, provider, model, input_tokens, output_tokens, latency_ms,
      estimated_cost, cached, status, request_id, attempts, error_code, priced, provider_key, settled_at)
    select r.created_at, r.user_id, r.feature, r.provider, r.model, r.estimated_input_tokens, r.max_output_tokens,
      least(extract(epoch from v_now - r.created_at) * 1000, 2147483647)::integer,
      r.reserved_cost, r.cached, 'expired', r.request_id, 0, 'reservation_expired',
      r.reserved_cost > 0 or r.cached, r.provider_key, v_now
    from unnest(v_rows) as r
    order by r.created_at, r.request_id
    on conflict (request_id) do nothing
    returning c.*
  )
  select array_agg(tollgate.usage_delta_of(
      row(charged.*)::public.ai_api_calls, 1, r.budget_ids,
      (r.estimated_input_tokens + r.max_output_tokens)::bigint, r.reserved_cost))
  into v_deltas
  from charged
  join unnest(v_rows) as r on r.request_id = charged.request_id;

  if v_deltas is not null then
    perform tollgate.apply_usage_deltas(v_deltas);
  end if;
  return cardinality(v_rows);
end;
$$;
comment on function tollgate.expire_reservations(interval, integer) is
  'Job (every minute): turns reservations older than max_age (default 10 min, at least 400 s) into `expired` ai_api_calls rows charged at their estimate and releases them. SKIP LOCKED: safe concurrently. Returns how many it expired. Called by pg_cron as postgres, or by service_role.';
revoke all on function tollgate.expire_reservations(interval, integer) from public, anon, authenticated;
grant execute on function tollgate.expire_reservations(interval, integer) to service_role;

-- ----------------------------------------------------------------------------
-- tollgate.prune_api_usage() returns jsonb
-- ----------------------------------------------------------------------------
-- Settled rows older than the longest tier window can no longer be counted by any
-- window. Expired rows are kept at least a day so that a late settle() still finds
-- the budgets the reservation was made against. Reservations in flight are never
-- touched (expire_reservations owns them). Deletes use the BRIN index on created_at.
create function tollgate.prune_api_usage(max_rows integer default 2000000)
returns jsonb
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := clock_timestamp();
  v_window interval;
  v_settled bigint;
  v_expired bigint;
  v_cache bigint;
  v_rejections bigint;
  v_abandoned bigint;
  v_cron bigint;
  v_folded bigint;
begin
  if max_rows is null or max_rows < 1 then
    raise exception 'tollgate.prune_api_usage: max_rows must be positive' using errcode = '22023';
  end if;
  select make_interval(secs => coalesce(max(w.window_seconds), 3600)) into v_window from tollgate.tier_windows as w;

  delete from public.api_usage as u
  where u.request_id in (
    select o.request_id from public.api_usage as o
    where o.status = 'settled' and o.created_at < v_now - v_window
    limit max_rows
  );
  get diagnostics v_settled = row_count;

  delete from public.api_usage as u
  where u.request_id in (
    select o.request_id from public.api_usage as o
    where o.status = 'expired' and o.created_at < v_now - greatest(v_window, interval '1 day')
    limit max_rows
  );
  get diagnostics v_expired = row_count;

  -- Fold the contention shards of past days into shard 0 (see usage_daily).
  with folded as (
    delete from tollgate.usage_daily as u
    where u.day < (v_now at time zone 'UTC')::date and u.shard > 0
    returning u.*
  )
  select tollgate.add_to_usage_daily(array(
    select row(
      f.day, f.provider, f.model, f.feature, 0, sum(f.calls), sum(f.input_tokens), sum(f.output_tokens),
      sum(f.cached_input_tokens), sum(f.cache_write_tokens), sum(f.reasoning_tokens), sum(f.cost_usd),
      sum(f.saved_cost_usd), sum(f.latency_ms_sum), sum(f.cache_hits), sum(f.success_calls), sum(f.error_calls),
      sum(f.timeout_calls), sum(f.client_closed_calls), sum(f.expired_calls), sum(f.fallback_calls),
      sum(f.unpriced_calls), v_now)::tollgate.usage_daily
    from folded as f
    group by f.day, f.provider, f.model, f.feature))
  into v_folded;

  delete from tollgate.response_cache as c where coalesce(c.stale_until, c.expires_at) < v_now;
  get diagnostics v_cache = row_count;

  delete from tollgate.rejections as r where r.created_at < v_now - interval '30 days';
  get diagnostics v_rejections = row_count;

  -- An abandoned request id need only outlive an admission of it still on its way.
  delete from tollgate.abandoned_requests as a where a.abandoned_at < v_now - interval '1 day';
  get diagnostics v_abandoned = row_count;

  -- pg_cron keeps every run's details forever unless pruned.
  delete from cron.job_run_details as j where j.end_time < v_now - interval '7 days';
  get diagnostics v_cron = row_count;

  return jsonb_build_object(
    'api_usage_settled', v_settled,
    'api_usage_expired', v_expired,
    'usage_daily_folded', v_folded,
    'response_cache', v_cache,
    'rejections', v_rejections,
    'abandoned_requests', v_abandoned,
    'cron_job_run_details', v_cron);
end;
$$;
comment on function tollgate.prune_api_usage(integer) is
  'Job (every 5 minutes): deletes settled api_usage rows older than the longest tier window (expired ones after a day), folds past days of usage_daily into one row per key, deletes stale response_cache entries, rejections older than 30 days, abandoned request ids older than a day and cron.job_run_details older than 7 days. Returns counts. Called by pg_cron as postgres, or by service_role.';
revoke all on function tollgate.prune_api_usage(integer) from public, anon, authenticated;
grant execute on function tollgate.prune_api_usage(integer) to service_role;

-- ----------------------------------------------------------------------------
-- Schedules (five-field: Debian's pg_cron 1.4 has no seconds). cron.schedule with a
-- job name updates the job of that name, so re-running this is harmless.
-- ----------------------------------------------------------------------------
select cron.schedule('tollgate-expire-reservations', '* * * * *', 'select tollgate.expire_reservations()');
select cron.schedule('tollgate-prune-api-usage', '*/5 * * * *', 'select tollgate.prune_api_usage()');
