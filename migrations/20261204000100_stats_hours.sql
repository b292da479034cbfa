-- Statistics per UTC hour beside the per-day ones (see 20261203000500_statistics.sql), so that
-- a range that does not start and end at midnight reads whole hours at its ends from these and
-- only the pieces of less than an hour from the killmail rows; and indexes that give the
-- leaders of one day or hour by kills, which top lists over many days prune with (src/stats/).
--
-- The same triggers, the same advisory lock and stats_rebuild() keep both grains: a set of
-- killmails is counted per hour, and the day tables get the sums of those hours.

CREATE TABLE stats_entity_hours (
    kind          int2        NOT NULL,
    entity_id     int8        NOT NULL,
    hour          timestamptz NOT NULL,
    kills         int4        NOT NULL DEFAULT 0,
    losses        int4        NOT NULL DEFAULT 0,
    kills_of_own  int4        NOT NULL DEFAULT 0,
    isk_destroyed float8      NOT NULL DEFAULT 0,
    isk_lost      float8      NOT NULL DEFAULT 0,
    solo_kills    int4        NOT NULL DEFAULT 0,
    points        int8        NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, entity_id, hour)
);

CREATE TABLE stats_hours (
    dimension int2        NOT NULL,
    key       int8        NOT NULL,
    hour      timestamptz NOT NULL,
    killmails int4        NOT NULL DEFAULT 0,
    isk       float8      NOT NULL DEFAULT 0,
    PRIMARY KEY (dimension, key, hour)
);
CREATE INDEX stats_hours_hour ON stats_hours (dimension, hour);

-- The leaders of one kind on one day or hour, best first, read without the table; a range of
-- days or hours of one kind too (so the plain (kind, day) index goes).
DROP INDEX stats_entity_days_day;
CREATE INDEX stats_entity_days_top ON stats_entity_days (kind, day, kills DESC)
    INCLUDE (entity_id, isk_destroyed);
CREATE INDEX stats_entity_hours_top ON stats_entity_hours (kind, hour, kills DESC)
    INCLUDE (entity_id, isk_destroyed);

-- The UTC hour of a time, whatever the session's time zone.
CREATE FUNCTION stats_hour(t timestamptz) RETURNS timestamptz LANGUAGE sql IMMUTABLE AS
$$ SELECT date_trunc('hour', t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' $$;

CREATE FUNCTION stats_day(hour timestamptz) RETURNS date LANGUAGE sql IMMUTABLE AS
$$ SELECT (hour AT TIME ZONE 'UTC')::date $$;

-- The per-day row functions become per-hour ones.
DROP FUNCTION stats_days_rows(int8[]);
DROP FUNCTION stats_loss_rows(int8[]);
DROP FUNCTION stats_kill_rows(int8[]);

CREATE FUNCTION stats_place_rows(killmail_ids int8[])
RETURNS TABLE (dimension int2, key int8, hour timestamptz, killmails int8, isk float8)
LANGUAGE sql STABLE AS $$
    SELECT d.dimension, d.key, x.hour, count(*), sum(x.isk)
    FROM (
        SELECT stats_hour(k.killmail_time) AS hour,
               coalesce(k.total_value, 0) AS isk,
               k.victim_ship_type_id, t.group_id, k.solar_system_id, s.constellation_id,
               coalesce(k.region_id, s.region_id) AS region_id
        FROM killmails k
        LEFT JOIN item_types t ON t.type_id = k.victim_ship_type_id
        LEFT JOIN solar_systems s ON s.solar_system_id = k.solar_system_id
        WHERE k.killmail_id = ANY(killmail_ids)
    ) x
    CROSS JOIN LATERAL (VALUES
        (0::int2, 0::int8), (1::int2, x.victim_ship_type_id), (2::int2, x.group_id),
        (3::int2, x.solar_system_id), (4::int2, x.constellation_id), (5::int2, x.region_id)
    ) AS d(dimension, key)
    WHERE d.key IS NOT NULL
    GROUP BY 1, 2, 3
$$;

CREATE FUNCTION stats_loss_rows(killmail_ids int8[])
RETURNS TABLE (kind int2, entity_id int8, hour timestamptz, losses int8, isk_lost float8)
LANGUAGE sql STABLE AS $$
    SELECT v.kind, v.entity_id, stats_hour(k.killmail_time), count(*),
           sum(coalesce(k.total_value, 0))
    FROM killmails k
    CROSS JOIN LATERAL (VALUES
        (1::int2, k.victim_character_id),
        (2::int2, k.victim_corporation_id),
        (3::int2, k.victim_alliance_id)
    ) AS v(kind, entity_id)
    WHERE k.killmail_id = ANY(killmail_ids) AND v.entity_id IS NOT NULL
    GROUP BY 1, 2, 3
$$;

CREATE FUNCTION stats_kill_rows(killmail_ids int8[])
RETURNS TABLE (kind int2, entity_id int8, hour timestamptz, kills int8, kills_of_own int8,
               isk_destroyed float8, solo_kills int8, points int8)
LANGUAGE sql STABLE AS $$
    SELECT e.kind, e.entity_id, stats_hour(k.killmail_time), count(*),
           count(*) FILTER (WHERE e.entity_id = CASE e.kind
               WHEN 1 THEN k.victim_character_id
               WHEN 2 THEN k.victim_corporation_id
               ELSE k.victim_alliance_id END),
           sum(coalesce(k.total_value, 0)), count(*) FILTER (WHERE k.solo),
           sum(coalesce(k.points, 0))
    FROM (
        SELECT DISTINCT a.killmail_id, v.kind, v.entity_id
        FROM attackers a
        CROSS JOIN LATERAL (VALUES
            (1::int2, a.character_id), (2::int2, a.corporation_id), (3::int2, a.alliance_id)
        ) AS v(kind, entity_id)
        WHERE a.killmail_id = ANY(killmail_ids) AND v.entity_id IS NOT NULL
    ) e
    JOIN killmails k ON k.killmail_id = e.killmail_id
    GROUP BY 1, 2, 3
$$;

-- Upserts in key order, hours first, then the days from the same hour rows. PL/pgSQL with a
-- generic plan, kept for the session: a LANGUAGE sql body is planned again at every call, and
-- planning these statements took 1-2 ms against 0.05 ms of work for a live batch of one
-- killmail (the plans are index lookups by killmail id, as good for an import's 5,000).
CREATE OR REPLACE FUNCTION stats_add_killmails(killmail_ids int8[]) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    WITH p AS MATERIALIZED (SELECT * FROM stats_place_rows(killmail_ids)),
    hours AS (
        INSERT INTO stats_hours AS s (dimension, key, hour, killmails, isk)
        SELECT dimension, key, hour, killmails, isk FROM p ORDER BY dimension, key, hour
        ON CONFLICT (dimension, key, hour) DO UPDATE
            SET killmails = s.killmails + excluded.killmails, isk = s.isk + excluded.isk
    )
    INSERT INTO stats_days AS s (dimension, key, day, killmails, isk)
    SELECT dimension, key, stats_day(hour), sum(killmails), sum(isk) FROM p
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (dimension, key, day) DO UPDATE
        SET killmails = s.killmails + excluded.killmails, isk = s.isk + excluded.isk;

    WITH l AS MATERIALIZED (SELECT * FROM stats_loss_rows(killmail_ids)),
    hours AS (
        INSERT INTO stats_entity_hours AS s (kind, entity_id, hour, losses, isk_lost)
        SELECT kind, entity_id, hour, losses, isk_lost FROM l ORDER BY kind, entity_id, hour
        ON CONFLICT (kind, entity_id, hour) DO UPDATE
            SET losses = s.losses + excluded.losses, isk_lost = s.isk_lost + excluded.isk_lost
    )
    INSERT INTO stats_entity_days AS s (kind, entity_id, day, losses, isk_lost)
    SELECT kind, entity_id, stats_day(hour), sum(losses), sum(isk_lost) FROM l
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (kind, entity_id, day) DO UPDATE
        SET losses = s.losses + excluded.losses, isk_lost = s.isk_lost + excluded.isk_lost;
END
$$;

CREATE OR REPLACE FUNCTION stats_add_attackers(killmail_ids int8[]) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    WITH a AS MATERIALIZED (SELECT * FROM stats_kill_rows(killmail_ids)),
    hours AS (
        INSERT INTO stats_entity_hours AS s
            (kind, entity_id, hour, kills, kills_of_own, isk_destroyed, solo_kills, points)
        SELECT kind, entity_id, hour, kills, kills_of_own, isk_destroyed, solo_kills, points
        FROM a ORDER BY kind, entity_id, hour
        ON CONFLICT (kind, entity_id, hour) DO UPDATE
            SET kills = s.kills + excluded.kills,
                kills_of_own = s.kills_of_own + excluded.kills_of_own,
                isk_destroyed = s.isk_destroyed + excluded.isk_destroyed,
                solo_kills = s.solo_kills + excluded.solo_kills,
                points = s.points + excluded.points
    )
    INSERT INTO stats_entity_days AS s
        (kind, entity_id, day, kills, kills_of_own, isk_destroyed, solo_kills, points)
    SELECT kind, entity_id, stats_day(hour), sum(kills), sum(kills_of_own), sum(isk_destroyed),
           sum(solo_kills), sum(points)
    FROM a GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (kind, entity_id, day) DO UPDATE
        SET kills = s.kills + excluded.kills,
            kills_of_own = s.kills_of_own + excluded.kills_of_own,
            isk_destroyed = s.isk_destroyed + excluded.isk_destroyed,
            solo_kills = s.solo_kills + excluded.solo_kills,
            points = s.points + excluded.points;
END
$$;

-- A killmail's value, solo or points changed: the differences are added where the killmail
-- was counted, per hour and per day.
CREATE OR REPLACE FUNCTION stats_killmails_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM old_rows o JOIN new_rows n ON n.killmail_id = o.killmail_id
        WHERE (o.total_value, o.solo, o.points) IS DISTINCT FROM (n.total_value, n.solo, n.points)
    ) THEN
        RETURN NULL;
    END IF;
    PERFORM stats_lock();

    WITH c AS (
        SELECT n.*, coalesce(n.total_value, 0) - coalesce(o.total_value, 0) AS isk_change
        FROM old_rows o JOIN new_rows n ON n.killmail_id = o.killmail_id
        WHERE coalesce(n.total_value, 0) <> coalesce(o.total_value, 0)
    ),
    d AS MATERIALIZED (
        SELECT p.dimension, p.key, stats_hour(c.killmail_time) AS hour, sum(c.isk_change) AS isk
        FROM c
        LEFT JOIN item_types t ON t.type_id = c.victim_ship_type_id
        LEFT JOIN solar_systems ss ON ss.solar_system_id = c.solar_system_id
        CROSS JOIN LATERAL (VALUES
            (0::int2, 0::int8), (1::int2, c.victim_ship_type_id), (2::int2, t.group_id),
            (3::int2, c.solar_system_id), (4::int2, ss.constellation_id),
            (5::int2, coalesce(c.region_id, ss.region_id))
        ) AS p(dimension, key)
        WHERE p.key IS NOT NULL
        GROUP BY 1, 2, 3
    ),
    hours AS (
        UPDATE stats_hours s SET isk = s.isk + d.isk
        FROM (SELECT * FROM d ORDER BY 1, 2, 3) d
        WHERE s.dimension = d.dimension AND s.key = d.key AND s.hour = d.hour
    )
    UPDATE stats_days s SET isk = s.isk + d.isk
    FROM (
        SELECT dimension, key, stats_day(hour) AS day, sum(isk) AS isk FROM d
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ) d
    WHERE s.dimension = d.dimension AND s.key = d.key AND s.day = d.day;

    WITH c AS (
        SELECT n.killmail_id, stats_hour(n.killmail_time) AS hour,
               coalesce(n.total_value, 0) - coalesce(o.total_value, 0) AS isk,
               (n.solo IS TRUE)::int4 - (o.solo IS TRUE)::int4 AS solo,
               coalesce(n.points, 0)::int8 - coalesce(o.points, 0) AS points,
               n.victim_character_id, n.victim_corporation_id, n.victim_alliance_id
        FROM old_rows o JOIN new_rows n ON n.killmail_id = o.killmail_id
        WHERE (o.total_value, o.solo, o.points) IS DISTINCT FROM (n.total_value, n.solo, n.points)
    ),
    d AS MATERIALIZED (
        SELECT kind, entity_id, hour, sum(isk_lost) AS isk_lost,
               sum(isk_destroyed) AS isk_destroyed, sum(solo_kills) AS solo_kills,
               sum(points) AS points
        FROM (
            SELECT v.kind, v.entity_id, c.hour, c.isk AS isk_lost, 0::float8 AS isk_destroyed,
                   0 AS solo_kills, 0::int8 AS points
            FROM c
            CROSS JOIN LATERAL (VALUES
                (1::int2, c.victim_character_id), (2::int2, c.victim_corporation_id),
                (3::int2, c.victim_alliance_id)
            ) AS v(kind, entity_id)
            WHERE v.entity_id IS NOT NULL
            UNION ALL
            SELECT e.kind, e.entity_id, c.hour, 0, c.isk, c.solo, c.points
            FROM c
            JOIN (
                SELECT DISTINCT a.killmail_id, v.kind, v.entity_id
                FROM attackers a
                CROSS JOIN LATERAL (VALUES
                    (1::int2, a.character_id), (2::int2, a.corporation_id),
                    (3::int2, a.alliance_id)
                ) AS v(kind, entity_id)
                WHERE a.killmail_id IN (SELECT killmail_id FROM c) AND v.entity_id IS NOT NULL
            ) e ON e.killmail_id = c.killmail_id
        ) x
        GROUP BY 1, 2, 3
    ),
    hours AS (
        UPDATE stats_entity_hours s
        SET isk_lost = s.isk_lost + d.isk_lost,
            isk_destroyed = s.isk_destroyed + d.isk_destroyed,
            solo_kills = s.solo_kills + d.solo_kills,
            points = s.points + d.points
        FROM (SELECT * FROM d ORDER BY 1, 2, 3) d
        WHERE s.kind = d.kind AND s.entity_id = d.entity_id AND s.hour = d.hour
    )
    UPDATE stats_entity_days s
    SET isk_lost = s.isk_lost + d.isk_lost,
        isk_destroyed = s.isk_destroyed + d.isk_destroyed,
        solo_kills = s.solo_kills + d.solo_kills,
        points = s.points + d.points
    FROM (
        SELECT kind, entity_id, stats_day(hour) AS day, sum(isk_lost) AS isk_lost,
               sum(isk_destroyed) AS isk_destroyed, sum(solo_kills) AS solo_kills,
               sum(points) AS points
        FROM d GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ) d
    WHERE s.kind = d.kind AND s.entity_id = d.entity_id AND s.day = d.day;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION stats_rebuild() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    ids int8[];
BEGIN
    PERFORM stats_lock();
    DELETE FROM stats_days;
    DELETE FROM stats_entity_days;
    DELETE FROM stats_hours;
    DELETE FROM stats_entity_hours;
    SELECT coalesce(array_agg(killmail_id), '{}') INTO ids FROM killmails;
    PERFORM stats_add_killmails(ids);
    PERFORM stats_add_attackers(ids);
END $$;

-- The hours of what is stored already (and the days again, from the same rows).
SELECT stats_rebuild();
