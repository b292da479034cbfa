#!/usr/bin/env bash
# Backfill speed against decompression speed, in the same run. For one day (2021-12-01: 10,671
# killmails) and three (2021-12-01..03: 25,767), each into an empty store:
#   - `bzip2 -dc` of the archives on one core (the yardstick);
#   - `queue backfill`: the archives fetched from a local EVE Ref (python3's http.server over a
#     copy of the fixtures in EVE Ref's layout), downloaded, decompressed and stored;
#   - `queue import` of the same killmails as uncompressed JSONL (made once with tar and jq),
#     announcing them (on a channel of its own) and, where the build has `--no-announce`, as
#     history (nothing announced, as the backfill).
# Each time is the summary's `elapsed`: for the backfill, downloading, reading and storing every
# day; for the import, reading and storing (neither counts connecting, nor migrating the empty
# store and loading its static data, done beforehand). Uses the local PostgreSQL; creates and
# drops its own database. Beside each time, the CPU seconds it cost: the queue process's and
# its PostgreSQL backends' (on a loaded machine the wall times stretch, these far less). QUEUE
# names another build of queue (to compare commits); IMPORT_BATCH_SIZE (killmails a
# transaction, 1000 by default) reaches both commands. Each line starts with the load averages
# (1, 5 and 15 minutes) when it began. Figures go in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
queue=${QUEUE:-./target/release/queue}
runs=${RUNS:-3}
port=${BENCH_EVEREF_PORT:-8765}
db=killreport_bench_backfill
fixtures=tests/it/fixtures/everef
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"; psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null' EXIT

mkdir -p "$work/everef/killmails/2021" "$work/jsonl"
for day in 01 02 03; do
  cp "$fixtures/killmails-2021-12-$day.tar.bz2" "$work/everef/killmails/2021/"
  bzip2 -dc "$fixtures/killmails-2021-12-$day.tar.bz2" | tar -xO | jq -c . \
    > "$work/jsonl/killmails-2021-12-$day.jsonl"
done
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/everef" >/dev/null 2>&1 &
server=$!
sleep 1
export EVEREF_BASE_URL="http://127.0.0.1:$port" RUST_LOG=warn
# Announcements of the JSONL import go to a channel no server listens on.
export EVENTS_CHANNEL="killreport:bench-backfill:$$"
history=
if "$queue" import --help | grep -q -- --no-announce; then history=yes; fi

touch "$work/empty.jsonl"
# CPU seconds (user + system) of the PostgreSQL backends serving the bench database while
# "$@" runs, sampled every 50 ms; the command's own output goes to $work/out.
backend_cpu() {
  declare -A ticks=()
  "$@" >"$work/out" &
  local pid=$! p t
  while kill -0 "$pid" 2>/dev/null; do
    for p in $(pgrep -f "postgres: .* $db " || true); do
      t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) && ticks[$p]=$t
    done
    sleep 0.05
  done
  wait "$pid"
  local sum=0
  for t in "${ticks[@]}"; do sum=$((sum + t)); done
  echo "scale=2; $sum / $(getconf CLK_TCK)" | bc
}
reset() {
  psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  DATABASE_URL="$base/$db" "$queue" import "$work/empty.jsonl" >/dev/null
}
seconds() { echo "$2 - $1" | bc; }
measure() {
  local label=$1 to=$2; shift 2
  local archives=() jsonl=() start end bzip backfill count load
  for day in "$@"; do
    archives+=("$fixtures/killmails-2021-12-$day.tar.bz2")
    jsonl+=("$work/jsonl/killmails-2021-12-$day.jsonl")
  done
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  start=$(date +%s.%N); bzip2 -dc "${archives[@]}" >/dev/null; end=$(date +%s.%N)
  bzip=$(seconds "$start" "$end")

  reset
  rm -rf "$work/downloads"
  pg=$(backend_cpu env DATABASE_URL="$base/$db" BACKFILL_DIR="$work/downloads" \
    /usr/bin/time -f '%U %S' -o "$work/cpu" "$queue" backfill --from 2021-12-01 --to "$to")
  backfill=$(sed -n 's/^elapsed: *\([0-9.]*\) s/\1/p' "$work/out")
  count=$(sed -n 's/^stored: *//p' "$work/out")
  cpu=$(awk '{print $1 + $2}' "$work/cpu")

  printf '%-10s load %s | bzip2 -dc %5.2f s | backfill %5.2f s, %s stored, %6.0f /s, ratio %.2f (CPU: queue %.2f s, PostgreSQL %.2f s = %.0f us a killmail)' \
    "$label" "$load" "$bzip" "$backfill" "$count" \
    "$(echo "$count / $backfill" | bc -l)" "$(echo "$backfill / $bzip" | bc -l)" "$cpu" "$pg" \
    "$(echo "$pg * 1000000 / $count" | bc -l)"
  jsonl_import "JSONL announced" "${jsonl[@]}"
  if [ -n "$history" ]; then jsonl_import "JSONL history" --no-announce "${jsonl[@]}"; fi
  echo
}
# `queue import` of JSONL into an empty store, printed as: label, time, killmails/s, CPU.
jsonl_import() {
  local label=$1 import jcpu jpg stored; shift
  reset
  jpg=$(backend_cpu env DATABASE_URL="$base/$db" \
    /usr/bin/time -f '%U %S' -o "$work/cpu" "$queue" import "$@")
  import=$(sed -n 's/^elapsed: *\([0-9.]*\) s/\1/p' "$work/out")
  stored=$(sed -n 's/^stored: *//p' "$work/out")
  jcpu=$(awk '{print $1 + $2}' "$work/cpu")
  printf ' | %s %5.2f s, %6.0f /s (CPU: queue %.2f s, PostgreSQL %.2f s = %.0f us a killmail)' \
    "$label" "$import" "$(echo "$stored / $import" | bc -l)" "$jcpu" "$jpg" \
    "$(echo "$jpg * 1000000 / $stored" | bc -l)"
}
for run in $(seq "$runs"); do
  echo "run $run"
  measure "one day" 2021-12-01 01
  measure "three days" 2021-12-03 01 02 03
done
