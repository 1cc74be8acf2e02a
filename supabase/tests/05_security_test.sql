-- ============================================================================
-- Security, as Supabase's advisors and the Data API see it: RLS everywhere; a
-- signed-in user reads only their own usage; anon reads nothing; no client writes
-- anything, calls a tollgate function, uses schema tollgate, or reads a Studio view.
-- Claims are set the way PostgREST sets them.
-- ============================================================================
begin;
select plan(45);

\ir helpers.psql

-- Two users, each with a settled call and an open reservation.
create temporary table users_ (name text primary key, id uuid) on commit drop;
insert into users_ values ('alice', pg_temp.new_user('alice@test')), ('bob', pg_temp.new_user('bob@test'));
grant select on users_ to anon, authenticated;
do $$
declare
  v_user record;
  v_request uuid;
begin
  for v_user in select * from users_ loop
    v_request := (tollgate.admit(jsonb_build_object('request_id', gen_random_uuid(), 'user_id', v_user.id,
      'model', 'gpt-4o-mini', 'estimated_cost_usd', 0.001)) ->> 'request_id')::uuid;
    perform tollgate.settle(jsonb_build_object('request_id', v_request, 'user_id', v_user.id, 'provider', 'openai',
      'model', 'gpt-4o-mini', 'status', 'success', 'input_tokens', 10, 'output_tokens', 5, 'latency_ms', 100,
      'cost_usd', 0.00001));
    perform tollgate.admit(jsonb_build_object('request_id', gen_random_uuid(), 'user_id', v_user.id,
      'model', 'gpt-4o-mini', 'estimated_cost_usd', 0.001));
  end loop;
end;
$$;

-- ----------------------------------------------------------------------------
-- anon: nothing at all
-- ----------------------------------------------------------------------------
select set_config('request.jwt.claims', '{"role": "anon"}', true);
set local role anon;
select throws_ok('select * from public.api_usage', '42501', null, 'anon cannot read api_usage');
select throws_ok('select * from public.ai_api_calls', '42501', null, 'anon cannot read ai_api_calls');
select throws_ok('select * from public.user_usage_daily', '42501', null, 'anon cannot read user_usage_daily');
select throws_ok('select * from public.my_usage', '42501', null, 'anon cannot read my_usage');
select throws_ok('select * from public.daily_cost_summary', '42501', null, 'anon cannot read daily_cost_summary');
select throws_ok($$select tollgate.admit('{}')$$, '42501', null, 'anon cannot call tollgate.admit');
reset role;

-- ----------------------------------------------------------------------------
-- A signed-in user: their own rows, nothing else, read only
-- ----------------------------------------------------------------------------
select set_config('request.jwt.claims',
  json_build_object('sub', (select id from users_ where name = 'alice'), 'role', 'authenticated')::text, true);
set local role authenticated;
select results_eq('select count(*)::integer, min(user_id::text) from public.api_usage',
  format('values (2, %L)', (select id from users_ where name = 'alice')), 'alice reads her own api_usage rows only');
select results_eq('select count(*)::integer, min(user_id::text) from public.ai_api_calls',
  format('values (1, %L)', (select id from users_ where name = 'alice')), 'alice reads her own ai_api_calls rows only');
select results_eq('select count(*)::integer, min(user_id::text) from public.user_usage_daily',
  format('values (1, %L)', (select id from users_ where name = 'alice')), 'alice reads her own daily usage only');
select results_eq('select count(*)::integer, sum(calls)::integer from public.my_usage', 'values (1, 1)',
  'my_usage shows alice her own usage');
select throws_ok(format('insert into public.api_usage (request_id, user_id, feature, provider, model) values (%L, %L, %L, %L, %L)',
  gen_random_uuid(), (select id from users_ where name = 'alice'), 'default', 'openai', 'x'), '42501', null,
  'alice cannot insert into api_usage');
select throws_ok('update public.ai_api_calls set estimated_cost = 0', '42501', null, 'alice cannot update ai_api_calls');
select throws_ok('delete from public.user_usage_daily', '42501', null, 'alice cannot delete her daily usage');
select throws_ok('delete from public.api_usage', '42501', null, 'alice cannot delete her request log');
select throws_ok('insert into public.my_usage (day) values (current_date)', '42501', null, 'alice cannot write through my_usage');
select throws_ok('select * from public.daily_cost_summary', '42501', null, 'alice cannot read daily_cost_summary');
select throws_ok('select * from public.cost_by_feature', '42501', null, 'alice cannot read cost_by_feature');
select throws_ok('select * from public.cost_by_user', '42501', null, 'alice cannot read cost_by_user');
select throws_ok('select * from public.budget_status', '42501', null, 'alice cannot read budget_status');
select throws_ok('select * from public.rejections_by_layer', '42501', null, 'alice cannot read rejections_by_layer');
select throws_ok($$select tollgate.admit('{}')$$, '42501', null, 'alice cannot call tollgate.admit');
select throws_ok($$select tollgate.settle('{}')$$, '42501', null, 'alice cannot call tollgate.settle');
select throws_ok('select tollgate.expire_reservations()', '42501', null, 'alice cannot run the jobs');
select throws_ok('select * from tollgate.budgets', '42501', null, 'alice cannot read tollgate tables');
select throws_ok('update tollgate.gateway_state set throttled = false', '42501', null, 'alice cannot touch the gateway state');
reset role;

select set_config('request.jwt.claims',
  json_build_object('sub', (select id from users_ where name = 'bob'), 'role', 'authenticated')::text, true);
set local role authenticated;
select results_eq('select count(*)::integer, min(user_id::text) from public.ai_api_calls',
  format('values (1, %L)', (select id from users_ where name = 'bob')), 'bob sees his call, not alice''s');
reset role;

select set_config('request.jwt.claims', '{"role": "authenticated"}', true);
set local role authenticated;
select is((select count(*)::integer from public.ai_api_calls) + (select count(*)::integer from public.my_usage), 0,
  'a token without a subject sees nothing');
reset role;

-- ----------------------------------------------------------------------------
-- Privileges, as the advisors check them
-- ----------------------------------------------------------------------------
select ok(not has_schema_privilege('anon', 'tollgate', 'usage') and not has_schema_privilege('authenticated', 'tollgate', 'usage'),
  'clients cannot use schema tollgate');
select is(
  (select coalesce(array_agg(p.oid::regprocedure::text order by p.oid::regprocedure::text), '{}')
   from pg_proc as p
   where p.pronamespace in ('tollgate'::regnamespace, 'public'::regnamespace)
     and (has_function_privilege('anon', p.oid, 'execute') or has_function_privilege('authenticated', p.oid, 'execute'))
     and exists (select from pg_namespace as n where n.oid = p.pronamespace and has_schema_privilege('anon', n.oid, 'usage'))),
  '{}'::text[],
  'no function that clients can reach is executable by them (advisors 0028/0029)');
select is(
  (select coalesce(array_agg(p.oid::regprocedure::text order by p.oid::regprocedure::text), '{}')
   from pg_proc as p
   where p.pronamespace = 'tollgate'::regnamespace
     and (has_function_privilege('anon', p.oid, 'execute') or has_function_privilege('authenticated', p.oid, 'execute'))),
  '{}'::text[],
  'no tollgate function is executable by anon or authenticated, even by name');
select is(
  (select coalesce(array_agg(p.oid::regprocedure::text order by p.oid::regprocedure::text), '{}')
   from pg_proc as p
   where p.pronamespace in ('tollgate'::regnamespace, 'public'::regnamespace)
     and not coalesce('search_path=""' = any (p.proconfig), false)),
  '{}'::text[],
  'every function sets search_path = '''' (advisor 0011)');
select ok(
  has_function_privilege('service_role', 'tollgate.admit(jsonb)', 'execute')
  and has_function_privilege('service_role', 'tollgate.settle(jsonb)', 'execute')
  and has_function_privilege('service_role', 'tollgate.usage(uuid, boolean)', 'execute')
  and has_function_privilege('service_role', 'tollgate.admit_many(jsonb)', 'execute')
  and has_function_privilege('service_role', 'tollgate.settle_many(jsonb)', 'execute'),
  'service_role may call the API functions');
select ok((select bool_and(p.prosecdef) from pg_proc as p
  where p.oid in ('tollgate.admit(jsonb)'::regprocedure, 'tollgate.settle(jsonb)'::regprocedure,
    'tollgate.admit_many(jsonb)'::regprocedure, 'tollgate.settle_many(jsonb)'::regprocedure,
    'tollgate.expire_reservations(interval, integer)'::regprocedure, 'tollgate.prune_api_usage(integer)'::regprocedure)),
  'the API functions are security definer (owned by postgres)');
select is(
  (select coalesce(array_agg(g.grant_ order by g.grant_), '{}')
   from (
     select c.oid::regclass::text || ':' || r.rolname || ':' || x.privilege as grant_
     from pg_class as c
     cross join (values ('anon'), ('authenticated')) as r (rolname)
     cross join (values ('INSERT'), ('UPDATE'), ('DELETE'), ('TRUNCATE')) as x (privilege)
     where c.relnamespace in ('public'::regnamespace, 'tollgate'::regnamespace) and c.relkind in ('r', 'v')
       and has_table_privilege(r.rolname, c.oid, x.privilege)
   ) as g),
  '{}'::text[],
  'no client role holds a write privilege on any table or view');
select is(
  (select coalesce(array_agg(c.oid::regclass::text order by c.oid::regclass::text), '{}')
   from pg_class as c
   where c.relnamespace in ('public'::regnamespace, 'tollgate'::regnamespace) and c.relkind in ('r', 'v')
     and has_table_privilege('anon', c.oid, 'SELECT')),
  '{}'::text[],
  'anon can read no table or view');
select is(
  (select array_agg(c.relname::text order by c.relname)
   from pg_class as c
   where c.relnamespace in ('public'::regnamespace, 'tollgate'::regnamespace) and c.relkind in ('r', 'v')
     and has_table_privilege('authenticated', c.oid, 'SELECT')),
  array['ai_api_calls', 'api_usage', 'my_usage', 'user_usage_daily'],
  'authenticated can read exactly the user-facing tables (through RLS) and my_usage');
select is(
  (select coalesce(array_agg(c.oid::regclass::text order by c.oid::regclass::text), '{}')
   from pg_class as c
   where c.relnamespace in ('public'::regnamespace, 'tollgate'::regnamespace) and c.relkind = 'r' and not c.relrowsecurity),
  '{}'::text[],
  'RLS is enabled on every table (advisor 0013)');
select is(
  (select coalesce(array_agg(c.oid::regclass::text order by c.oid::regclass::text), '{}')
   from pg_class as c
   where c.relnamespace = 'public'::regnamespace and c.relkind = 'v'
     and not coalesce('security_invoker=true' = any (c.reloptions), false)),
  '{}'::text[],
  'no security definer view (advisor 0010)');
-- (pg_cron is the platform's: hosted Supabase has it in pg_catalog.)
select is((select count(*)::integer from pg_extension where extnamespace = 'public'::regnamespace and extname <> 'pg_cron'), 0,
  'no extension lives in public (advisor 0014)');
select is(
  (select array_agg(p.tablename::text || ':' || p.cmd || ':' || array_to_string(p.roles, ',') order by p.tablename)
   from pg_policies as p where p.schemaname = 'public'),
  array['ai_api_calls:SELECT:authenticated', 'api_usage:SELECT:authenticated', 'user_usage_daily:SELECT:authenticated'],
  'the only policies let authenticated users select');
select is(
  (select coalesce(array_agg(c.relname::text order by c.relname), '{}')
   from pg_class as c
   where c.relnamespace = 'tollgate'::regnamespace and c.relkind = 'r'
     and not exists (
       select from pg_policy as p
       where p.polrelid = c.oid and not p.polpermissive and pg_get_expr(p.polqual, p.polrelid) = 'false')),
  '{}'::text[],
  'every tollgate table says outright that clients see nothing (a restrictive policy; advisor 0008)');
select is(
  (select count(*)::integer from pg_policies as p
   where p.schemaname = 'public' and p.qual not like '%( SELECT auth.uid() AS uid)%'),
  0,
  'policies call auth.uid() once per statement, (select auth.uid()) (advisor 0003)');
select is(
  (select coalesce(array_agg(v.relname::text), '{}')
   from pg_depend as d
   join pg_rewrite as rw on rw.oid = d.objid
   join pg_class as v on v.oid = rw.ev_class
   where d.refobjid = 'auth.users'::regclass and v.relnamespace = 'public'::regnamespace
     and (has_table_privilege('anon', v.oid, 'SELECT') or has_table_privilege('authenticated', v.oid, 'SELECT'))),
  '{}'::text[],
  'no client-readable view exposes auth.users (advisor 0002)');
select ok(
  (select count(*) = 0 from pg_class as c
   where c.relnamespace = 'tollgate'::regnamespace and c.relkind = 'r'
     and (has_table_privilege('service_role', c.oid, 'INSERT') or has_table_privilege('service_role', c.oid, 'UPDATE'))),
  'even service_role writes the gateway''s tables only through the functions');
select ok(
  (select count(*) = 0 from pg_class as c
   where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'
     and (has_table_privilege('service_role', c.oid, 'INSERT') or has_table_privilege('service_role', c.oid, 'DELETE'))),
  'and the public tables too');

select * from finish();
rollback;
