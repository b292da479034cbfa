#!/usr/bin/env bash
# Where PostgreSQL's time goes when `queue import` stores files: imports them into an empty
# database with every statement's duration logged (log_min_duration_statement = 0, and
# auto_explain for the statements the statistics triggers run inside), then sums the durations
# per statement from the server's log. Durations are wall time inside the server (a COPY's
# includes waiting for the client's rows; a statement's includes the AFTER triggers it fires),
# so on a loaded machine read them as shares, not costs. Needs a superuser (for
# session_preload_libraries) and read access to the server's log (PG_LOG).
#   scripts/profile-import.sh [queue import arguments…]     e.g. --no-announce day.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
queue=${QUEUE:-./target/release/queue}
log=${PG_LOG:-/var/log/postgresql/postgresql-15-main.log}
db=killreport_profile_import
work=$(mktemp -d)
trap 'rm -rf "$work"; psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null' EXIT
export EVENTS_CHANNEL="killreport:profile-import:$$" RUST_LOG=warn

psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
touch "$work/empty.jsonl"
DATABASE_URL="$base/$db" "$queue" import "$work/empty.jsonl" >/dev/null
psql "$base/postgres" -q \
  -c "ALTER DATABASE $db SET session_preload_libraries = 'auto_explain'" \
  -c "ALTER DATABASE $db SET auto_explain.log_min_duration = 0" \
  -c "ALTER DATABASE $db SET auto_explain.log_nested_statements = on" \
  -c "ALTER DATABASE $db SET auto_explain.log_format = json" \
  -c "ALTER DATABASE $db SET log_min_duration_statement = 0"
start=$(stat -c %s "$log")
DATABASE_URL="$base/$db" "$queue" import "$@" | grep -E '^(stored|elapsed)'
sleep 1
tail -c +"$((start + 1))" "$log" > "$work/log"
python3 - "$work/log" "$db" <<'PY'
import collections, json, re, sys
path, db = sys.argv[1], sys.argv[2]
head = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \w+ \[\d+\] \S+@' + re.escape(db) + r' \w+:\s+(.*)$')
other = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d')
entries, current = [], None
for line in open(path, errors='replace'):
    m = head.match(line)
    if m or other.match(line):
        if current is not None:
            entries.append(current)
        current = m.group(1) if m else None
    elif current is not None:
        current += '\n' + line.rstrip('\n')
if current is not None:
    entries.append(current)
parsed = []
for text in entries:
    m = re.match(r'duration: ([\d.]+) ms\s+(statement|plan|execute [^:]*):\s*(.*)', text, re.S)
    if not m:
        continue
    ms, kind, body = float(m.group(1)), m.group(2), m.group(3)
    if kind == 'plan':
        try:
            body = json.loads(body)['Query Text']
        except (ValueError, KeyError):
            pass
    parsed.append((ms, kind == 'plan', ' '.join(body.split())))
top = {body for _, plan, body in parsed if not plan}
total = collections.defaultdict(lambda: [0, 0.0])
for ms, plan, body in parsed:
    if plan and body in top:
        continue  # auto_explain's copy of a top-level statement
    key = ('  inside: ' if plan else '') + body[:100]
    total[key][0] += 1
    total[key][1] += ms
print(f"{'ms':>9} {'times':>6}  statement (\"inside\": run by a trigger or function)")
for key, (n, ms) in sorted(total.items(), key=lambda kv: -kv[1][1])[:25]:
    print(f'{ms:9.1f} {n:6d}  {key}')
PY
