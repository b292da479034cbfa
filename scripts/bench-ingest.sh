#!/usr/bin/env bash
# Job to event: `loadgen ingest` publishes real killmails as killmail.ingest jobs at a fixed rate
# and times each from its publish until its event arrives on Redis (RabbitMQ → worker-killmails
# → one PostgreSQL transaction → Redis), at 50/s and at 500/s, into an empty store, with ESI
# unreachable. BINS names one or more folders, each holding a `worker-killmails` and a `loadgen`
# build (e.g. an older commit's beside this one's), measured one after the other in the same
# run, RUNS times; by default this checkout's release build. Figures go in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
archives=tests/it/fixtures/everef
runs=${RUNS:-1}
if [ -z "${BINS:-}" ]; then
  cargo build --release --quiet --bin worker-killmails --bin loadgen
  BINS=./target/release
fi
db=killreport_bench_lat
export DATABASE_URL="$base/$db" EVENTS_CHANNEL=killreport:bench:lat \
  INGEST_QUEUE=killmail.ingest.bench RABBITMQ_EXCHANGE=killreport.bench \
  ESI_BASE_URL=http://127.0.0.1:9 RUST_LOG=warn
worker=""
trap '[ -n "$worker" ] && kill "$worker" 2>/dev/null || true' EXIT
for run in $(seq "$runs"); do
  for bins in $BINS; do
    echo "== run $run: $bins (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
    psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    "$bins/worker-killmails" &
    worker=$!
    sleep 5
    "$bins/loadgen" ingest --rate 50 --count 1500 "$archives/killmails-2021-12-01.tar.bz2"
    "$bins/loadgen" ingest --rate 500 --count 5000 "$archives/killmails-2021-12-02.tar.bz2"
    kill "$worker"
    wait "$worker" || true
    worker=""
  done
done
psql "$base/postgres" -qc "DROP DATABASE $db"
