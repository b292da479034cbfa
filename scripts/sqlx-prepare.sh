#!/usr/bin/env bash
# Refreshes .sqlx/, the query metadata that lets `query!` compile without a database
# (SQLX_OFFLINE=true, as every build does: see .cargo/config.toml). Run it after changing a query
# or a migration, and commit .sqlx/. It builds a scratch database from migrations/ on the local
# PostgreSQL and drops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${SQLX_DEV_BASE:-postgres://postgres@127.0.0.1:5432}
db="killreport_sqlx_$$"
out=$(mktemp -d)
trap 'psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null; rm -rf "$out"' EXIT
psql "$base/postgres" -qc "CREATE DATABASE $db"
for migration in migrations/*.sql; do
  psql "$base/$db" -q -v ON_ERROR_STOP=1 -f "$migration"
done
touch src/lib.rs
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$out" DATABASE_URL="$base/$db" cargo check --all-targets --quiet
rm -rf .sqlx && cp -r "$out" .sqlx
echo "$(ls .sqlx | wc -l) queries in .sqlx/"
