-- ============================================================================
-- Tollgate 13: batches — many admissions, or many settlements, in one call
--
-- Every admission and every settlement is one SQL function call, and on a busy
-- gateway most of its cost is per transaction, not per decision: the relation locks
-- (admit() touches about 30 relations), the executor state PL/pgSQL sets up again in
-- every transaction, the commit and the round trip. The ai function therefore sends
-- the calls that arrive while an earlier one is in flight together, as one call to
-- these functions (group commit: an admission that finds none in flight goes at
-- once, alone; a settlement waits a few milliseconds for others to join it).
--
-- A batch is one transaction and it is all or nothing: should any element raise (an
-- input the database refuses, a deadlock, a lost connection), nothing of the batch
-- is kept and the caller sends each element again on its own, through admit() or
-- settle(), which answers for that element alone. Both are idempotent on the request
-- id, so an element whose batch committed unseen is not counted twice.
--
-- Each admission is decided exactly as admit() decides it alone, each statement
-- seeing the writes of the admissions before it. admit_many() decides its elements in
-- user id order, and a user's in the order given: two requests of one user in one
-- admission batch count against that user's windows one after the other, in the
-- order given. (Requests that arrive together have no order between users.)
-- Settlements decide nothing against each other: settle() and settle_many() record
-- their calls with the same function (tollgate.record_calls), one call or many.
--
-- Two reads are shared. A model's route (its steps' breakers and keys, its prices) is
-- read by the first element routed to that model and used by the later ones, until
-- an element takes a half-open probe and the next one reads it again. A feature's
-- budgets are read by its first element, and each reservation an element makes is
-- added to them, as a new read would see it. So neither is older than the batch, as
-- a lone admission's reads are never older than itself; what other transactions
-- change meanwhile shows in the next batch (a budget's hard cap is checked again,
-- atomically, by every reservation).
--
-- Locks are held to the end of the batch, not of each element. So that batches do
-- not deadlock on users, admit_many() takes the user locks of all its elements
-- first, in user id order (admit_one() is told they are held), and
-- settle_many() writes the rollups of all its calls last, in one statement per
-- rollup, in key order. Deciding in user id order, admit_many() writes its users'
-- user_usage_daily rows (their reservations) in that key order too: an admission
-- batch and a settlement batch sharing two users would otherwise lock the two rows
-- in opposite orders. The rows an element locks after its user (a breaker's probe,
-- a budget shard) may still be locked in another order than a lone call locks them:
-- Postgres detects such a deadlock and aborts one side, whose elements are then sent
-- alone.
--
-- A batch holds at most tollgate.max_batch_size() elements (32): it holds its users'
-- locks until it commits, and the function's batches (batching.ts) are no larger. The
-- upstream step counts on that bound too (tollgate.provider_room: grants a transaction
-- makes unseen by the others): raising it means raising that margin with it.
-- ============================================================================

-- ----------------------------------------------------------------------------
-- tollgate.admit_many(requests jsonb) returns jsonb
-- ----------------------------------------------------------------------------
-- requests: a JSON array of 1..max_batch_size() admit() requests. Returns the JSON
-- array of their answers, in the same order (the contract of each is admit()'s).
create function tollgate.admit_many(requests jsonb)
returns jsonb
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_users uuid[];
  v_order integer[];
  v_routes tollgate.route_read[] := '{}'::tollgate.route_read[];
  v_budgets tollgate.budget_read[] := '{}'::tollgate.budget_read[];
  v_admission record;
  v_position integer;
  v_answers jsonb[];
begin
  if coalesce(jsonb_array_length(case when jsonb_typeof(requests) = 'array' then requests end), 0)
    not between 1 and tollgate.max_batch_size()
  then
    raise exception 'tollgate.admit_many: requests must be an array of 1 to % admit() requests',
      tollgate.max_batch_size()
      using errcode = '22023';
  end if;

  -- The users, and the requests in user id order (see the header; a user's own in the
  -- order given, one without a valid user id last), read in one statement.
  select
    array_agg(distinct e.user_id order by e.user_id) filter (where e.user_id is not null),
    array_agg(e.position order by e.user_id nulls last, e.position)
  into v_users, v_order
  from (
    select
      r.ordinality::integer as position,
      case
        when jsonb_typeof(r.value -> 'user_id') = 'string'
          and (r.value ->> 'user_id') ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
          then (r.value ->> 'user_id')::uuid
      end as user_id
    from jsonb_array_elements(requests) with ordinality as r
  ) as e;

  -- The user locks admit() takes, all of them first and in one order (see the header).
  -- A request whose user_id is not a UUID is refused by admit() without a lock. A dry
  -- run's user is locked too, though admit() would not lock it: it only waits for that
  -- user's admissions in flight.
  perform tollgate.lock_users(coalesce(v_users, '{}'));

  -- Then each request, given the routes and budgets the ones before it read (see
  -- admit_one()); its answer goes where its request was.
  v_answers := array_fill(null::jsonb, array[jsonb_array_length(requests)]);
  foreach v_position in array v_order loop
    v_admission := tollgate.admit_one(requests -> (v_position - 1), true, v_routes, v_budgets);
    v_routes := v_admission.routes;
    v_budgets := v_admission.budgets;
    v_answers[v_position] := v_admission.answer;
  end loop;
  return to_jsonb(v_answers);
end;
$$;
comment on function tollgate.admit_many(jsonb) is
  'Admission of up to 32 requests in one transaction: each decided as admit() decides it, in user id order (a user''s in the order given); the answers as a JSON array in the order of the requests. All or nothing: on an error, send each request to admit() alone. Called by the ai function as postgres (or service_role); never by clients.';
revoke all on function tollgate.admit_many(jsonb) from public, anon, authenticated;
grant execute on function tollgate.admit_many(jsonb) to service_role;

-- ----------------------------------------------------------------------------
-- tollgate.settle_many(calls jsonb) returns void
-- ----------------------------------------------------------------------------
-- calls: a JSON array of 1..max_batch_size() settle() calls. They are recorded together,
-- as settle() records one (tollgate.record_calls); then the rollups of all of them at once.
create function tollgate.settle_many(calls jsonb)
returns void
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_deltas tollgate.usage_delta[];
begin
  if coalesce(jsonb_array_length(case when jsonb_typeof(calls) = 'array' then calls end), 0)
    not between 1 and tollgate.max_batch_size()
  then
    raise exception 'tollgate.settle_many: calls must be an array of 1 to % settle() calls',
      tollgate.max_batch_size()
      using errcode = '22023';
  end if;
  v_deltas := (tollgate.record_calls(calls)).deltas;
  -- The batch's rollups at once: one upsert per rollup row, all of them locked in key
  -- order, as the expiry job locks them.
  if cardinality(v_deltas) > 0 then
    perform tollgate.apply_usage_deltas(v_deltas);
  end if;
end;
$$;
comment on function tollgate.settle_many(jsonb) is
  'Settlement of up to 32 calls in one transaction, each as settle() settles it, the rollups of all of them applied at once. All or nothing: on an error, send each call to settle() alone. Called by the ai function as postgres (or service_role); never by clients.';
revoke all on function tollgate.settle_many(jsonb) from public, anon, authenticated;
grant execute on function tollgate.settle_many(jsonb) to service_role;
