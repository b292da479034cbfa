-- History batches (a backfill, `queue import --no-announce`) bring their statistics already
-- summed: the writer has every killmail of the batch in memory, so it adds up each (entity,
-- hour) and (place, hour) itself (src/db/batch_stats.rs, by the rules of stats_place_rows,
-- stats_loss_rows and stats_kill_rows) and sends the sums by binary COPY; the server only
-- merges them into the hour and day tables. Reading the batch back, unpivoting its attackers,
-- making them distinct and grouping them was about half of the server's statistics work for a
-- batch (`EXPLAIN ANALYZE`: 147 of 297 ms for the entities of 5,000 killmails). Live batches,
-- revaluations and stats_rebuild() keep the functions of 20261205001000.
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

-- Merges the sums this connection staged (one row per entity or place and hour) into the hour
-- and day tables, under the lock every writer of the aggregates holds to its commit.
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
END
$$;
