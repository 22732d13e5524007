-- Runs once, when the postgres service starts on an empty volume
-- (mounted into /docker-entrypoint-initdb.d by infra/docker-compose.yml).
-- Two databases, each owned by its own user: `prefect` for the Prefect server,
-- `relay` for Relay's job store. Change the passwords here and in docker-compose.yml together.

CREATE USER prefect WITH PASSWORD 'prefect';
CREATE DATABASE prefect OWNER prefect;

CREATE USER relay WITH PASSWORD 'relay';
CREATE DATABASE relay OWNER relay;

-- Prefect's migrations create pg_trgm; create it here as the superuser so they never
-- depend on the owner's rights to extensions.
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
