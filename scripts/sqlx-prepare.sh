#!/usr/bin/env bash
# Refreshes .sqlx/, the query metadata that lets `query!` compile without a database
# (SQLX_OFFLINE=true, as CI builds). Run it after changing a query or a migration.
set -euo pipefail
cd "$(dirname "$0")/.."
db=${SQLX_DEV_DB:-killreport_sqlx}
base=${SQLX_DEV_BASE:-postgres://postgres@127.0.0.1:5432}
psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
for migration in migrations/*.sql; do
  psql "$base/$db" -q -v ON_ERROR_STOP=1 -f "$migration"
done
rm -rf .sqlx && mkdir .sqlx
touch src/lib.rs
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$PWD/.sqlx" DATABASE_URL="$base/$db" cargo check --all-targets --quiet
echo "$(ls .sqlx | wc -l) queries in .sqlx/"
