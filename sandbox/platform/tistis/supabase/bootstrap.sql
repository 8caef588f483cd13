-- What a Supabase project already has before the platform's first migration runs.
--
-- None of this lives in the platform's repository: Supabase creates it when a project is made.
-- The sandbox's "tistis" shape runs this file once per database, as the superuser `postgres`,
-- and then the platform's own migrations (supabase/migrations/*.sql) in filename order.
--
-- Safe to run again on the same cluster and database: roles are cluster-wide, so each one is
-- created only when pg_roles does not know it yet; everything else is IF NOT EXISTS or
-- CREATE OR REPLACE. A role that already exists keeps its LOGIN and password (the sandbox's
-- control code gives service_role a login for the API), only its RLS attributes are put right.

-- The three API roles. Requests from browsers run as anon or authenticated and are subject to
-- row level security; the backend's service key runs as service_role, which bypasses it.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
END
$roles$;

ALTER ROLE anon NOBYPASSRLS;
ALTER ROLE authenticated NOBYPASSRLS;
ALTER ROLE service_role BYPASSRLS;

-- gen_random_uuid() and sha256() are built into PostgreSQL 13+ and 11+. Supabase also ships
-- pgcrypto; enable it only where the server has it, so this never fails on a bare build.
DO $ext$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto') THEN
        CREATE EXTENSION IF NOT EXISTS pgcrypto;
    END IF;
END
$ext$;

-- The auth schema: the users that sign in, and helpers that read the request's JWT claims.
-- PostgREST puts the claims into settings of the transaction; outside a request they are
-- unset, so auth.uid() is NULL and every tenant policy matches nothing.
CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE IF NOT EXISTS auth.users (
    id          uuid PRIMARY KEY,
    email       text,
    created_at  timestamptz DEFAULT now()
);

CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
    )::uuid
$fn$;

CREATE OR REPLACE FUNCTION auth.jwt() RETURNS jsonb
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(nullif(current_setting('request.jwt.claims', true), '')::jsonb, '{}'::jsonb)
$fn$;

CREATE OR REPLACE FUNCTION auth.role() RETURNS text
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
    )::text
$fn$;

-- The API roles may see into both schemas; what they may touch is granted per object.
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION auth.uid(), auth.jwt(), auth.role() TO anon, authenticated, service_role;

-- Like Supabase: whatever the migrating role creates in public later (every migration) is
-- granted to the three roles at once, so row level security, not GRANT, is what keeps tenants
-- apart. Default privileges belong to the role that sets them: this file must run as the role
-- that runs the migrations (`postgres` in the sandbox and on Supabase).
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
