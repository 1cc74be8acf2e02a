-- ============================================================================
-- Supabase-faithful bootstrap for a private PostgreSQL cluster.
--
-- Hosted Supabase (and `supabase start`) ships this already; a plain cluster does
-- not. Run once as the cluster's superuser `supabase_admin`, before migrations.
-- It mirrors what the migrations may rely on, and nothing more:
--   * the API roles and their memberships, with `postgres` NOT a superuser;
--   * schemas `extensions` and `auth`, `auth.users` and the claim helpers that RLS
--     policies call (`auth.uid()`, `auth.role()`, `auth.jwt()`, `auth.email()`);
--   * the default privileges Supabase grants to the API roles in `public`
--     (so RLS, not missing grants, is what protects a table — as in production);
--   * extensions that need a superuser to create (pg_cron, pgTAP, plpgsql_check),
--     pre-created the way Supabase's supautils lets `postgres` enable them.
-- ============================================================================

-- ----------------------------------------------------------------------------
-- Roles
-- ----------------------------------------------------------------------------
create role postgres login createdb createrole bypassrls replication password 'postgres';
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
create role authenticator login noinherit password 'postgres';
create role supabase_auth_admin login noinherit createrole password 'postgres';

grant anon, authenticated, service_role to authenticator;
grant anon, authenticated, service_role to postgres;

-- `postgres` owns the database (and through pg_database_owner, schema public), as on Supabase.
alter database postgres owner to postgres;
alter database postgres set search_path = "$user", public, extensions;
-- PostgREST switches roles per request; keep statement timeouts like Supabase's defaults.
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';

-- ----------------------------------------------------------------------------
-- Schemas
-- ----------------------------------------------------------------------------
create schema extensions authorization postgres;
grant usage on schema extensions to public;
grant usage on schema public to anon, authenticated, service_role;

alter default privileges for role postgres in schema public
  grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on functions to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on sequences to anon, authenticated, service_role;

-- ----------------------------------------------------------------------------
-- auth: the part of Supabase Auth's schema that application SQL touches
-- ----------------------------------------------------------------------------
create schema auth authorization supabase_auth_admin;
grant usage on schema auth to anon, authenticated, service_role, postgres;

create table auth.users (
  instance_id uuid,
  id uuid primary key,
  aud varchar(255),
  role varchar(255),
  email varchar(255),
  encrypted_password varchar(255),
  email_confirmed_at timestamptz,
  last_sign_in_at timestamptz,
  raw_app_meta_data jsonb,
  raw_user_meta_data jsonb,
  is_super_admin boolean,
  is_anonymous boolean not null default false,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  deleted_at timestamptz
);
alter table auth.users owner to supabase_auth_admin;
alter table auth.users enable row level security;
-- Hosted Supabase gives `postgres` full access to the auth tables.
grant select, insert, update, delete, references on auth.users to postgres;
grant all on auth.users to service_role;

-- The claim helpers read what PostgREST sets per request: `request.jwt.claims` (JSON),
-- with the older per-claim `request.jwt.claim.<name>` settings taking precedence.
create function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

create function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create function auth.email() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

alter function auth.jwt() owner to supabase_auth_admin;
alter function auth.uid() owner to supabase_auth_admin;
alter function auth.role() owner to supabase_auth_admin;
alter function auth.email() owner to supabase_auth_admin;
grant execute on function auth.jwt(), auth.uid(), auth.role(), auth.email()
  to public;

-- ----------------------------------------------------------------------------
-- Extensions that need a superuser to create
-- ----------------------------------------------------------------------------
create extension pg_cron with schema pg_catalog;
grant usage on schema cron to postgres with grant option;
grant all on all tables in schema cron to postgres with grant option;
grant all on all sequences in schema cron to postgres with grant option;
grant all on all functions in schema cron to postgres with grant option;

create extension pgtap with schema extensions;
create extension plpgsql_check with schema extensions;
