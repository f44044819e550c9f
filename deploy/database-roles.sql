-- The privileges of one service's two database roles (deploy/README.md, "One database, two
-- roles per service"): the owner runs the migrations (it owns the schema and every table in
-- it); the app role, which the running service connects as, may read and write those tables
-- and nothing else: no CREATE in any schema, and as it owns no table, no ALTER, DROP,
-- TRUNCATE or index.
--
-- Run as an administrator (a superuser, or a member of the owner role that owns the schema or
-- the database), once per service, after creating both roles (LOGIN, each with its own
-- password) and the schema (CREATE SCHEMA ... AUTHORIZATION the owner):
--   psql -v owner=identity_owner -v app=identity_app -v schema=identity -f deploy/database-roles.sql
-- A service in a database of its own uses `schema=public`: the owner role is then made the
-- owner of `public`, as a migration role that is not a superuser may create nothing there
-- otherwise (PostgreSQL 15 gives `public` to the database's owner; this file revokes CREATE on
-- it from everyone else).
-- Safe to run again. The test suites run every service as such an app role, with this file.

-- The owner role migrates: the schema is its own.
ALTER SCHEMA :"schema" OWNER TO :"owner";

-- Nobody else creates objects in the shared `public` schema or uses this one.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON SCHEMA :"schema" FROM PUBLIC;
GRANT USAGE ON SCHEMA :"schema" TO :"app";

-- Tables and sequences the migrations create from now on are the app role's to use...
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"schema"
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"schema"
  GRANT USAGE, SELECT ON SEQUENCES TO :"app";
-- ...and so are those that exist already (a database that ran with one role until now).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA :"schema" TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA :"schema" TO :"app";

-- Both roles find the service's tables without naming the schema.
ALTER ROLE :"owner" SET search_path = :"schema";
ALTER ROLE :"app" SET search_path = :"schema";
