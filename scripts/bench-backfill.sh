#!/usr/bin/env bash
# Import speed against decompression speed, in the same run: `queue import` of EVE Ref archives
# into an empty store (one day, 2021-12-01: 10,671 killmails; three days, 2021-12-01..03: 25,767)
# beside `bzip2 -dc` of the same files on one core, run after run. The import's time is the one
# its summary prints (reading, storing and announcing; not connecting or migrating). Uses the
# local PostgreSQL and Redis; creates and drops its own database. QUEUE names another build of
# queue (to compare commits); figures go in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
queue=${QUEUE:-./target/release/queue}
runs=${RUNS:-3}
db=killreport_bench_backfill
dir=tests/it/fixtures/everef
one=("$dir/killmails-2021-12-01.tar.bz2")
three=("$dir/killmails-2021-12-01.tar.bz2" "$dir/killmails-2021-12-02.tar.bz2" "$dir/killmails-2021-12-03.tar.bz2")
export EVENTS_CHANNEL=killreport:bench:backfill RUST_LOG=warn
reset() { psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"; }
measure() {
  local label=$1; shift
  local start end bzip import read
  start=$(date +%s.%N); bzip2 -dc "$@" >/dev/null; end=$(date +%s.%N)
  bzip=$(echo "$end - $start" | bc)
  reset
  out=$(DATABASE_URL="$base/$db" "$queue" import "$@")
  import=$(echo "$out" | sed -n 's/^elapsed: *\([0-9.]*\) s/\1/p')
  read=$(echo "$out" | sed -n 's/^stored: *//p')
  printf '%-10s bzip2 -dc %6.2f s | queue import %6.2f s, %s stored, %6.0f killmails/s | ratio %.2f\n' \
    "$label" "$bzip" "$import" "$read" "$(echo "$read / $import" | bc -l)" "$(echo "$import / $bzip" | bc -l)"
}
for run in $(seq "$runs"); do
  echo "run $run"
  measure "one day" "${one[@]}"
  measure "three days" "${three[@]}"
done
psql "$base/postgres" -qc "DROP DATABASE $db"
