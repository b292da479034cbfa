#!/usr/bin/env bash
# Import rate of the 2021-12-01 EVE Ref archive (10,671 killmails): into an empty database, and
# into one already holding the 2021-12-02 and 2021-12-03 archives. Uses the local PostgreSQL and
# Redis; creates and drops its own databases. Figures go in BENCHMARKS.md. QUEUE names another
# build's `queue` binary (e.g. an older commit's, to compare side by side); by default this
# checkout's release build.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
archives=tests/it/fixtures/everef
runs=${RUNS:-3}
if [ -z "${QUEUE:-}" ]; then
  cargo build --release --quiet --bin queue
  QUEUE=./target/release/queue
fi
export EVENTS_CHANNEL=killreport:bench:import RUST_LOG=warn
reset() { psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1"; }
rate() { DATABASE_URL="$base/$1" "$QUEUE" import "$archives/killmails-2021-12-01.tar.bz2" | grep -E "^(stored|rate)"; }
for run in $(seq "$runs"); do
  echo "run $run: empty store"
  reset killreport_bench_empty
  rate killreport_bench_empty
  echo "run $run: store holding 2021-12-02 and 2021-12-03"
  reset killreport_bench_full
  DATABASE_URL="$base/killreport_bench_full" "$QUEUE" import \
    "$archives/killmails-2021-12-02.tar.bz2" "$archives/killmails-2021-12-03.tar.bz2" >/dev/null
  rate killreport_bench_full
done
psql "$base/postgres" -qc "DROP DATABASE killreport_bench_empty" -c "DROP DATABASE killreport_bench_full"
