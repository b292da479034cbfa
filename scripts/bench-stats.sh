#!/usr/bin/env bash
# Statistics latency (BENCHMARKS.md): a store holding the three EVE Ref fixture archives plus
# the same killmails twice more under shifted ids and dates (3 × 25,767 killmails over 9 days),
# each valued (an estimate from the victim's damage, as a revaluation writes it), then
# `loadgen stats`: top, killmailsDateCounts and entity stats from the aggregates and from the
# rows. Creates and drops its own database on the local PostgreSQL (BENCH_DB names it; with
# KEEP_DB=1 it is left for `loadgen stats --only …` runs). QUEUE and LOADGEN name the binaries
# (default: this checkout's debug builds); LOADGEN_ARGS are added to `loadgen stats`.
# YEAR=1 builds a year instead: the three archives, and before them every day from 2020-12-01
# to 2021-11-30 one of the three again at a tenth (ids and times shifted), so that a range of
# the whole store is 368 days in 13 months; then `loadgen stats` runs with the months rolled up,
# without them (stats_months_ready emptied: everything from the days) and with them again.
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
copies="1 2"
[ -n "${YEAR:-}" ] && copies=""
for copy in $copies; do
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
if [ -n "${YEAR:-}" ]; then
  # Day n of the year (n = 0…364) is archive day n % 3, the killmails whose id % 10 is n % 10.
  /usr/bin/time -f "a year at a tenth: %e s" psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 <<'SQL'
BEGIN;
SET LOCAL TIME ZONE 'UTC';
CREATE TEMPORARY TABLE year_days AS
SELECT n, (DATE '2020-12-01' + n) - (DATE '2021-12-01' + n % 3) AS shift,
       DATE '2021-12-01' + n % 3 AS source
FROM generate_series(0, 364) AS n;
INSERT INTO killmails (killmail_id, hash, killmail_time, solar_system_id, region_id, moon_id,
    war_id, victim_character_id, victim_corporation_id, victim_alliance_id, victim_faction_id,
    victim_ship_type_id, victim_damage_taken, victim_position_x, victim_position_y,
    victim_position_z, attacker_count, zkb, source)
SELECT k.killmail_id + (y.n + 1)::int8 * 1000000000, k.hash, k.killmail_time + y.shift * interval '1 day',
    k.solar_system_id, k.region_id, k.moon_id, k.war_id, k.victim_character_id,
    k.victim_corporation_id, k.victim_alliance_id, k.victim_faction_id, k.victim_ship_type_id,
    k.victim_damage_taken, k.victim_position_x, k.victim_position_y, k.victim_position_z,
    k.attacker_count, k.zkb, k.source
FROM year_days y JOIN killmails k
  ON k.killmail_time >= y.source AND k.killmail_time < y.source + 1 AND k.killmail_id % 10 = y.n % 10
WHERE k.killmail_id < 1000000000 ORDER BY 1;
INSERT INTO attackers (killmail_id, attacker_index, killmail_time, character_id,
    corporation_id, alliance_id, faction_id, ship_type_id, weapon_type_id, damage_done,
    final_blow, security_status)
SELECT k.killmail_id, a.attacker_index, k.killmail_time, a.character_id, a.corporation_id,
    a.alliance_id, a.faction_id, a.ship_type_id, a.weapon_type_id, a.damage_done, a.final_blow,
    a.security_status
FROM killmails k JOIN attackers a ON a.killmail_id = k.killmail_id % 1000000000
WHERE k.killmail_id >= 1000000000;
COMMIT;
SQL
fi
/usr/bin/time -f "revaluation of every killmail: %e s" psql "$DATABASE_URL" -qc \
  "UPDATE killmails SET estimate = jsonb_build_object('totalValue', victim_damage_taken * 1000.0,
     'solo', attacker_count = 1, 'points', attacker_count % 10)"
psql "$DATABASE_URL" -qc "VACUUM ANALYZE"
psql "$DATABASE_URL" -Atc "SELECT count(*) || ' killmails, ' || (SELECT count(*) FROM attackers) || ' attackers, ' || (SELECT count(*) FROM stats_entity_days) || ' entity-days' FROM killmails"
# As the server's roll-up does (src/stats/mod.rs, refresh_months).
roll_up="SELECT count(stats_refresh_month(m)) || ' months' FROM stats_months_due() m;
         ANALYZE stats_entity_months, stats_months"
/usr/bin/time -f "months rolled up: %e s" psql "$DATABASE_URL" -qAtc "$roll_up"
loadgen_run() {
  /usr/bin/time -f "loadgen: %e s wall, %U+%S s CPU" "$loadgen" stats --requests "${REQUESTS:-200}" ${LOADGEN_ARGS:-}
}
if [ -n "${YEAR:-}" ]; then
  echo "== with the months"; loadgen_run
  psql "$DATABASE_URL" -qc "DELETE FROM stats_months_ready"
  echo "== without them (days only)"; loadgen_run
  psql "$DATABASE_URL" -qAtc "$roll_up"
  echo "== with the months again"; loadgen_run
else
  loadgen_run
fi
