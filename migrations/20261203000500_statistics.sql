-- Statistics kept as aggregates per UTC day, maintained by statement-level triggers in the
-- transaction that writes the killmails, so every write path (worker batches, imports,
-- backfills, revaluations) keeps them right, and a statistics question reads a few index
-- ranges however many killmails are stored (see src/stats/). `stats_rebuild()` (`queue stats
-- rebuild`) recomputes both tables from the rows.
--
-- A killmail's ISK, solo and points are the generated columns total_value, solo and points
-- (zKillboard's block, else killreport's estimate); a killmail without a value counts 0 ISK.

-- Per UTC day and character (kind 1), corporation (2) or alliance (3). `kills`: killmails
-- with it among the attackers, each once; `losses`: killmails with it as the victim;
-- `kills_of_own`: killmails counted in both (a corporation's awox), so that "involved in"
-- is kills + losses - kills_of_own.
CREATE TABLE stats_entity_days (
    kind          int2   NOT NULL,
    entity_id     int8   NOT NULL,
    day           date   NOT NULL,
    kills         int4   NOT NULL DEFAULT 0,
    losses        int4   NOT NULL DEFAULT 0,
    kills_of_own  int4   NOT NULL DEFAULT 0,
    isk_destroyed float8 NOT NULL DEFAULT 0,
    isk_lost      float8 NOT NULL DEFAULT 0,
    solo_kills    int4   NOT NULL DEFAULT 0,
    points        int8   NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, entity_id, day)
);
-- Top lists: one kind, a range of days.
CREATE INDEX stats_entity_days_day ON stats_entity_days (kind, day);

-- Per UTC day and place or ship: every killmail (dimension 0, key 0), the victim's ship type
-- (1), its ship group (2), the solar system (3), constellation (4) and region (5); killmails
-- and their ISK.
CREATE TABLE stats_days (
    dimension int2   NOT NULL,
    key       int8   NOT NULL,
    day       date   NOT NULL,
    killmails int4   NOT NULL DEFAULT 0,
    isk       float8 NOT NULL DEFAULT 0,
    PRIMARY KEY (dimension, key, day)
);
CREATE INDEX stats_days_day ON stats_days (dimension, day);

-- Every writer of the aggregates holds this advisory lock (transaction-scoped) before its
-- upserts: the store's writers already run one at a time (they hold the ingest sequence lock),
-- and a revaluation then waits for the batch in hand instead of taking entity rows in an order
-- that could deadlock with it across statements.
CREATE FUNCTION stats_lock() RETURNS void LANGUAGE sql AS
$$ SELECT pg_advisory_xact_lock(7017280556954416499) $$;

-- The rows a set of killmails adds to stats_days (victim's ship, group and places); used by
-- the triggers and the rebuild alike.
CREATE FUNCTION stats_days_rows(killmail_ids int8[])
RETURNS TABLE (dimension int2, key int8, day date, killmails int8, isk float8)
LANGUAGE sql STABLE AS $$
    SELECT d.dimension, d.key, d.day, count(*), sum(d.isk)
    FROM (
        SELECT (k.killmail_time AT TIME ZONE 'UTC')::date AS day,
               coalesce(k.total_value, 0) AS isk,
               k.victim_ship_type_id, t.group_id, k.solar_system_id, s.constellation_id,
               coalesce(k.region_id, s.region_id) AS region_id
        FROM killmails k
        LEFT JOIN item_types t ON t.type_id = k.victim_ship_type_id
        LEFT JOIN solar_systems s ON s.solar_system_id = k.solar_system_id
        WHERE k.killmail_id = ANY(killmail_ids)
    ) x
    CROSS JOIN LATERAL (VALUES
        (0::int2, 0::int8, x.day, x.isk),
        (1::int2, x.victim_ship_type_id, x.day, x.isk),
        (2::int2, x.group_id, x.day, x.isk),
        (3::int2, x.solar_system_id, x.day, x.isk),
        (4::int2, x.constellation_id, x.day, x.isk),
        (5::int2, x.region_id, x.day, x.isk)
    ) AS d(dimension, key, day, isk)
    WHERE d.key IS NOT NULL
    GROUP BY d.dimension, d.key, d.day
$$;

-- The victims' side of a set of killmails: losses and ISK lost per entity and day.
CREATE FUNCTION stats_loss_rows(killmail_ids int8[])
RETURNS TABLE (kind int2, entity_id int8, day date, losses int8, isk_lost float8)
LANGUAGE sql STABLE AS $$
    SELECT v.kind, v.entity_id, (k.killmail_time AT TIME ZONE 'UTC')::date, count(*),
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

-- The attackers' side of a set of killmails: each entity once per killmail.
CREATE FUNCTION stats_kill_rows(killmail_ids int8[])
RETURNS TABLE (kind int2, entity_id int8, day date, kills int8, kills_of_own int8,
               isk_destroyed float8, solo_kills int8, points int8)
LANGUAGE sql STABLE AS $$
    SELECT e.kind, e.entity_id, (k.killmail_time AT TIME ZONE 'UTC')::date, count(*),
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

-- Upserts in key order, so that two writers never wait for each other's rows crosswise.
CREATE FUNCTION stats_add_killmails(killmail_ids int8[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO stats_days AS s (dimension, key, day, killmails, isk)
    SELECT dimension, key, day, killmails, isk FROM stats_days_rows(killmail_ids)
    ORDER BY dimension, key, day
    ON CONFLICT (dimension, key, day) DO UPDATE
        SET killmails = s.killmails + excluded.killmails, isk = s.isk + excluded.isk;
    INSERT INTO stats_entity_days AS s (kind, entity_id, day, losses, isk_lost)
    SELECT kind, entity_id, day, losses, isk_lost FROM stats_loss_rows(killmail_ids)
    ORDER BY kind, entity_id, day
    ON CONFLICT (kind, entity_id, day) DO UPDATE
        SET losses = s.losses + excluded.losses, isk_lost = s.isk_lost + excluded.isk_lost;
$$;

CREATE FUNCTION stats_add_attackers(killmail_ids int8[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO stats_entity_days AS s
        (kind, entity_id, day, kills, kills_of_own, isk_destroyed, solo_kills, points)
    SELECT kind, entity_id, day, kills, kills_of_own, isk_destroyed, solo_kills, points
    FROM stats_kill_rows(killmail_ids)
    ORDER BY kind, entity_id, day
    ON CONFLICT (kind, entity_id, day) DO UPDATE
        SET kills = s.kills + excluded.kills,
            kills_of_own = s.kills_of_own + excluded.kills_of_own,
            isk_destroyed = s.isk_destroyed + excluded.isk_destroyed,
            solo_kills = s.solo_kills + excluded.solo_kills,
            points = s.points + excluded.points;
$$;

-- A killmail's rows come before its attackers' (the store writes both in one transaction, the
-- attackers of a killmail in one statement), so the killmail trigger counts the victim's side
-- and the places, the attackers trigger the killers' side, each reading the killmail's value
-- as it is then.
CREATE FUNCTION stats_killmails_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids int8[];
BEGIN
    SELECT array_agg(killmail_id) INTO ids FROM new_rows;
    IF ids IS NOT NULL THEN
        PERFORM stats_lock();
        PERFORM stats_add_killmails(ids);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION stats_attackers_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids int8[];
BEGIN
    SELECT array_agg(DISTINCT killmail_id) INTO ids FROM new_rows;
    IF ids IS NOT NULL THEN
        PERFORM stats_lock();
        PERFORM stats_add_attackers(ids);
    END IF;
    RETURN NULL;
END $$;

-- A killmail's value, solo or points changed (zKillboard's block arrived for a killmail held
-- without one; a revaluation by the day's prices): the differences are added where the
-- killmail was counted. Day, victim and places never change after insert.
CREATE FUNCTION stats_killmails_updated() RETURNS trigger LANGUAGE plpgsql AS $$
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
    )
    UPDATE stats_days s SET isk = s.isk + d.isk
    FROM (
        SELECT p.dimension, p.key, (c.killmail_time AT TIME ZONE 'UTC')::date AS day,
               sum(c.isk_change) AS isk
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
        ORDER BY 1, 2, 3
    ) d
    WHERE s.dimension = d.dimension AND s.key = d.key AND s.day = d.day;

    WITH c AS (
        SELECT n.killmail_id, (n.killmail_time AT TIME ZONE 'UTC')::date AS day,
               coalesce(n.total_value, 0) - coalesce(o.total_value, 0) AS isk,
               (n.solo IS TRUE)::int4 - (o.solo IS TRUE)::int4 AS solo,
               coalesce(n.points, 0)::int8 - coalesce(o.points, 0) AS points,
               n.victim_character_id, n.victim_corporation_id, n.victim_alliance_id
        FROM old_rows o JOIN new_rows n ON n.killmail_id = o.killmail_id
        WHERE (o.total_value, o.solo, o.points) IS DISTINCT FROM (n.total_value, n.solo, n.points)
    )
    UPDATE stats_entity_days s
    SET isk_lost = s.isk_lost + d.isk_lost,
        isk_destroyed = s.isk_destroyed + d.isk_destroyed,
        solo_kills = s.solo_kills + d.solo_kills,
        points = s.points + d.points
    FROM (
        SELECT kind, entity_id, day, sum(isk_lost) AS isk_lost,
               sum(isk_destroyed) AS isk_destroyed, sum(solo_kills) AS solo_kills,
               sum(points) AS points
        FROM (
            SELECT v.kind, v.entity_id, c.day, c.isk AS isk_lost, 0::float8 AS isk_destroyed,
                   0 AS solo_kills, 0::int8 AS points
            FROM c
            CROSS JOIN LATERAL (VALUES
                (1::int2, c.victim_character_id), (2::int2, c.victim_corporation_id),
                (3::int2, c.victim_alliance_id)
            ) AS v(kind, entity_id)
            WHERE v.entity_id IS NOT NULL
            UNION ALL
            SELECT e.kind, e.entity_id, c.day, 0, c.isk, c.solo, c.points
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
        ORDER BY 1, 2, 3
    ) d
    WHERE s.kind = d.kind AND s.entity_id = d.entity_id AND s.day = d.day;
    RETURN NULL;
END $$;

CREATE TRIGGER stats_killmails_inserted AFTER INSERT ON killmails
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_killmails_inserted();
CREATE TRIGGER stats_attackers_inserted AFTER INSERT ON attackers
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_attackers_inserted();
CREATE TRIGGER stats_killmails_updated AFTER UPDATE ON killmails
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_killmails_updated();

-- Both tables recomputed from the rows, in one transaction: readers see the old figures until
-- it commits; writers wait for it.
CREATE FUNCTION stats_rebuild() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    ids int8[];
BEGIN
    PERFORM stats_lock();
    DELETE FROM stats_days;
    DELETE FROM stats_entity_days;
    SELECT coalesce(array_agg(killmail_id), '{}') INTO ids FROM killmails;
    PERFORM stats_add_killmails(ids);
    PERFORM stats_add_attackers(ids);
END $$;

-- Name search: a case-insensitive prefix is one range of these indexes.
CREATE INDEX entity_names_lower_name ON entity_names (lower(name) text_pattern_ops);
CREATE INDEX solar_systems_lower_name ON solar_systems (lower(name) text_pattern_ops);
CREATE INDEX item_types_lower_name ON item_types (lower(name) text_pattern_ops);
CREATE INDEX constellations_lower_name ON constellations (lower(name) text_pattern_ops);
CREATE INDEX regions_lower_name ON regions (lower(name) text_pattern_ops);
