-- ============================================================================
-- Tollgate 11: graceful degradation — a stale cached answer when providers are down
--
-- Seed 000 asks that an app keep working when every AI provider is down: "show
-- cached responses". A feature with `stale_cache_seconds > 0` keeps its cache
-- entries that long past their expiry (settle() sets response_cache.stale_until),
-- and when every provider of a call's route has failed, the ai function asks for
-- one with tollgate.stale_answer() — a second round trip, on the failure path only.
-- ============================================================================

-- ----------------------------------------------------------------------------
-- tollgate.stale_answer(cache_key, feature) returns jsonb
-- ----------------------------------------------------------------------------
-- The cached answer for this exact request and feature while its stale window
-- lasts, expired or not: {response, cost_usd, created_at}, or null. The feature
-- must match so that one feature's answers never serve another's.
create function tollgate.stale_answer(cache_key text, feature text)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object('response', c.response, 'cost_usd', c.cost_usd, 'created_at', c.created_at)
  from tollgate.response_cache as c
  where c.cache_key = stale_answer.cache_key
    and c.feature = stale_answer.feature
    and c.stale_until > now()
$$;
comment on function tollgate.stale_answer(text, text) is
  'For the ai function when every provider failed: a cached answer still inside its feature''s stale window, or null. Called as postgres or service_role; never by clients.';
revoke all on function tollgate.stale_answer(text, text) from public, anon, authenticated;
grant execute on function tollgate.stale_answer(text, text) to service_role;
