#!/usr/bin/env bash
# Statistics latency (BENCHMARKS.md): a store holding the three EVE Ref fixture archives plus
# the same killmails twice more under shifted ids and dates (3 × 25,767 killmails over 9 days),
# each valued (an estimate from the victim's damage, as a revaluation writes it), then
# `loadgen stats`: top, killmailsDateCounts and entity stats from the aggregates and from the
# rows. Creates and drops its own database on the local PostgreSQL (BENCH_DB names it; with
# KEEP_DB=1 it is left for `loadgen stats --only …` runs). QUEUE and LOADGEN name the binaries
# (default: this checkout's debug builds); LOADGEN_ARGS are added to `loadgen stats`.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
db=${BENCH_DB:-killreport_bench_stats}
queue=${QUEUE:-./target/debug/queue}
loadgen=${LOADGEN:-./target/debug/loadgen}
archives=tests/it/fixtures/everef
export RUST_LOG=warn EVENTS_CHANNEL=killreport:bench:stats DATABASE_URL="$base/$db"
psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
if [ -z "${KEEP_DB:-}" ]; then
  trap 'psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db"' EXIT
fi
"$queue" import "$archives"/killmails-2021-12-0{1,2,3}.tar.bz2 | grep -E "^(stored|rate)"
# The copies go through the same triggers as any write (one INSERT … SELECT per table).
for copy in 1 2; do
  /usr/bin/time -f "copy $copy: %e s" psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 <<SQL
BEGIN;
INSERT INTO killmails (killmail_id, hash, killmail_time, solar_system_id, region_id, moon_id,
    war_id, victim_character_id, victim_corporation_id, victim_alliance_id, victim_faction_id,
    victim_ship_type_id, victim_damage_taken, victim_position_x, victim_position_y,
    victim_position_z, attacker_count, zkb, source)
SELECT killmail_id + $copy * 1000000000, hash, killmail_time + interval '$((copy * 3)) days',
    solar_system_id, region_id, moon_id, war_id, victim_character_id, victim_corporation_id,
    victim_alliance_id, victim_faction_id, victim_ship_type_id, victim_damage_taken,
    victim_position_x, victim_position_y, victim_position_z, attacker_count, zkb, source
FROM killmails WHERE killmail_id < 1000000000 ORDER BY killmail_id;
INSERT INTO attackers (killmail_id, attacker_index, killmail_time, character_id,
    corporation_id, alliance_id, faction_id, ship_type_id, weapon_type_id, damage_done,
    final_blow, security_status)
SELECT killmail_id + $copy * 1000000000, attacker_index,
    killmail_time + interval '$((copy * 3)) days', character_id, corporation_id, alliance_id,
    faction_id, ship_type_id, weapon_type_id, damage_done, final_blow, security_status
FROM attackers WHERE killmail_id < 1000000000;
COMMIT;
SQL
done
/usr/bin/time -f "revaluation of every killmail: %e s" psql "$DATABASE_URL" -qc \
  "UPDATE killmails SET estimate = jsonb_build_object('totalValue', victim_damage_taken * 1000.0,
     'solo', attacker_count = 1, 'points', attacker_count % 10)"
psql "$DATABASE_URL" -qc "VACUUM ANALYZE"
psql "$DATABASE_URL" -Atc "SELECT count(*) || ' killmails, ' || (SELECT count(*) FROM attackers) || ' attackers, ' || (SELECT count(*) FROM stats_entity_days) || ' entity-days' FROM killmails"
/usr/bin/time -f "loadgen: %e s wall, %U+%S s CPU" "$loadgen" stats --requests "${REQUESTS:-200}" ${LOADGEN_ARGS:-}
