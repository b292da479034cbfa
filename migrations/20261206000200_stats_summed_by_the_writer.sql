-- History batches (a backfill, `queue import --no-announce`) bring their statistics already
-- summed: the writer has every killmail of the batch in memory, so it adds up each (entity,
-- hour) and (place, hour) itself (src/db/batch_stats.rs, by the rules of stats_place_rows,
-- stats_loss_rows and stats_kill_rows) and sends the sums by binary COPY; the server only
-- merges them into the hour and day tables. Reading the batch back, unpivoting its attackers,
-- making them distinct and grouping them was about half of the server's statistics work for a
-- batch (`EXPLAIN ANALYZE`: 147 of 297 ms for the entities of 5,000 killmails). Live batches,
-- revaluations and stats_rebuild() keep computing their sums in SQL (20261205001000), and now
-- stage them the same way, so that one function, stats_add_staged(), merges every sum.
--
-- The two tables are templates, as killmail_staging is (20261202000200): each connection sends
-- into temporary tables of the same names, made LIKE these and emptied at each commit.
CREATE UNLOGGED TABLE stats_entity_staging (
    kind          int2        NOT NULL,
    entity_id     int8        NOT NULL,
    hour          timestamptz NOT NULL,
    kills         int4        NOT NULL,
    losses        int4        NOT NULL,
    kills_of_own  int4        NOT NULL,
    isk_destroyed float8      NOT NULL,
    isk_lost      float8      NOT NULL,
    solo_kills    int4        NOT NULL,
    points        int8        NOT NULL
);

CREATE UNLOGGED TABLE stats_place_staging (
    dimension int2        NOT NULL,
    key       int8        NOT NULL,
    hour      timestamptz NOT NULL,
    killmails int4        NOT NULL,
    isk       float8      NOT NULL
);

-- This connection's staging tables, made on its first use of them.
CREATE FUNCTION stats_stage() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('pg_temp.stats_entity_staging') IS NULL THEN
        CREATE TEMPORARY TABLE stats_entity_staging (LIKE stats_entity_staging)
            ON COMMIT DELETE ROWS;
        CREATE TEMPORARY TABLE stats_place_staging (LIKE stats_place_staging)
            ON COMMIT DELETE ROWS;
    END IF;
END
$$;

-- Merges the sums this connection staged (one row per entity or place and hour) into the hour
-- and day tables, under the lock every writer of the aggregates holds to its commit, and
-- empties the staging tables (a live batch's two triggers each stage and merge).
CREATE FUNCTION stats_add_staged() RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    PERFORM stats_lock();
    INSERT INTO stats_hours AS s (dimension, key, hour, killmails, isk)
    SELECT dimension, key, hour, killmails, isk FROM pg_temp.stats_place_staging
    ORDER BY dimension, key, hour
    ON CONFLICT (dimension, key, hour) DO UPDATE
        SET killmails = s.killmails + excluded.killmails, isk = s.isk + excluded.isk;
    INSERT INTO stats_days AS s (dimension, key, day, killmails, isk)
    SELECT dimension, key, stats_day(hour), sum(killmails), sum(isk)
    FROM pg_temp.stats_place_staging
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (dimension, key, day) DO UPDATE
        SET killmails = s.killmails + excluded.killmails, isk = s.isk + excluded.isk;
    INSERT INTO stats_entity_hours AS s (kind, entity_id, hour, kills, losses, kills_of_own,
                                         isk_destroyed, isk_lost, solo_kills, points)
    SELECT * FROM pg_temp.stats_entity_staging ORDER BY kind, entity_id, hour
    ON CONFLICT (kind, entity_id, hour) DO UPDATE
        SET kills = s.kills + excluded.kills,
            losses = s.losses + excluded.losses,
            kills_of_own = s.kills_of_own + excluded.kills_of_own,
            isk_destroyed = s.isk_destroyed + excluded.isk_destroyed,
            isk_lost = s.isk_lost + excluded.isk_lost,
            solo_kills = s.solo_kills + excluded.solo_kills,
            points = s.points + excluded.points;
    INSERT INTO stats_entity_days AS s (kind, entity_id, day, kills, losses, kills_of_own,
                                        isk_destroyed, isk_lost, solo_kills, points)
    SELECT kind, entity_id, stats_day(hour), sum(kills), sum(losses), sum(kills_of_own),
           sum(isk_destroyed), sum(isk_lost), sum(solo_kills), sum(points)
    FROM pg_temp.stats_entity_staging
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (kind, entity_id, day) DO UPDATE
        SET kills = s.kills + excluded.kills,
            losses = s.losses + excluded.losses,
            kills_of_own = s.kills_of_own + excluded.kills_of_own,
            isk_destroyed = s.isk_destroyed + excluded.isk_destroyed,
            isk_lost = s.isk_lost + excluded.isk_lost,
            solo_kills = s.solo_kills + excluded.solo_kills,
            points = s.points + excluded.points;
    DELETE FROM pg_temp.stats_place_staging;
    DELETE FROM pg_temp.stats_entity_staging;
END
$$;

-- The places of a set of killmails, per hour, summed from the rows and merged as above.
CREATE OR REPLACE FUNCTION stats_add_places(killmail_ids int8[]) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    PERFORM stats_stage();
    INSERT INTO pg_temp.stats_place_staging (dimension, key, hour, killmails, isk)
    SELECT dimension, key, hour, killmails, isk FROM stats_place_rows(killmail_ids);
    PERFORM stats_add_staged();
END
$$;

-- The characters, corporations and alliances of a set of killmails, per hour: the victims'
-- side (`with_losses`), the attackers' (`with_kills`) or both, summed from the rows and merged
-- as above.
CREATE OR REPLACE FUNCTION stats_add_entities(killmail_ids int8[], with_losses bool,
                                              with_kills bool) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    PERFORM stats_stage();
    INSERT INTO pg_temp.stats_entity_staging
    SELECT kind, entity_id, hour, sum(kills), sum(losses), sum(kills_of_own),
           sum(isk_destroyed), sum(isk_lost), sum(solo_kills), sum(points)
    FROM (
        SELECT kind, entity_id, hour, 0 AS kills, losses::int4, 0 AS kills_of_own,
               0::float8 AS isk_destroyed, isk_lost, 0 AS solo_kills, 0::int8 AS points
        FROM stats_loss_rows(killmail_ids) WHERE with_losses
        UNION ALL
        SELECT kind, entity_id, hour, kills::int4, 0, kills_of_own::int4, isk_destroyed, 0,
               solo_kills::int4, points
        FROM stats_kill_rows(killmail_ids) WHERE with_kills
    ) x
    GROUP BY 1, 2, 3;
    PERFORM stats_add_staged();
END
$$;
