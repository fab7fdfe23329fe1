#!/bin/sh
# Run once by the postgres image on an empty database: the role and schema GoTrue migrates into.
set -eu
psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres -v password="$POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE supabase_auth_admin LOGIN NOINHERIT CREATEROLE PASSWORD :'password';
CREATE SCHEMA auth AUTHORIZATION supabase_auth_admin;
GRANT CREATE ON DATABASE postgres TO supabase_auth_admin;
ALTER ROLE supabase_auth_admin SET search_path = auth;
SQL
