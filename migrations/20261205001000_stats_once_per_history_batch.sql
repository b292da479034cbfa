-- History (a backfill, `queue import --no-announce`) adds a batch's statistics in one call after
-- its killmails and attackers are in, instead of one statement trigger on each table: the
-- victims' and the attackers' sides of an (entity, hour) are summed before they are written, so
-- each aggregate row is written once a batch (30,000 rows for a batch of 5,000 of the fixture
-- days, against 33,600 by the two triggers) and none is inserted by one trigger only to be
-- updated by the next (an update costs about twice an insert: both indexes get a new entry). The
-- writer sets `killreport.stats_deferred` for its transaction (the triggers then leave the batch
-- alone) and calls stats_add() with the killmails it stored, under the same advisory lock as
-- every other writer of the aggregates, before it commits. Live batches keep the triggers.
--
-- The attackers' side also reads the batch's killmails by id once, not for every attacker's
-- character, corporation and alliance (a hash join of the two small sets: the planner otherwise
-- took a sequential scan of all killmails for it).

CREATE OR REPLACE FUNCTION stats_kill_rows(killmail_ids int8[])
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
    JOIN (SELECT * FROM killmails WHERE killmail_id = ANY(killmail_ids)) k
        ON k.killmail_id = e.killmail_id
    GROUP BY 1, 2, 3
$$;

-- The places of a set of killmails, per hour and per day.
CREATE FUNCTION stats_add_places(killmail_ids int8[]) RETURNS void
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
END
$$;

-- The characters, corporations and alliances of a set of killmails, per hour and per day: the
-- victims' side (`with_losses`), the attackers' (`with_kills`) or both, summed per row first.
CREATE FUNCTION stats_add_entities(killmail_ids int8[], with_losses bool, with_kills bool)
RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    WITH e AS MATERIALIZED (
        SELECT kind, entity_id, hour, sum(kills) AS kills, sum(losses) AS losses,
               sum(kills_of_own) AS kills_of_own, sum(isk_destroyed) AS isk_destroyed,
               sum(isk_lost) AS isk_lost, sum(solo_kills) AS solo_kills, sum(points) AS points
        FROM (
            SELECT kind, entity_id, hour, 0 AS kills, losses::int4, 0 AS kills_of_own,
                   0::float8 AS isk_destroyed, isk_lost, 0 AS solo_kills, 0::int8 AS points
            FROM stats_loss_rows(killmail_ids) WHERE with_losses
            UNION ALL
            SELECT kind, entity_id, hour, kills::int4, 0, kills_of_own::int4, isk_destroyed, 0,
                   solo_kills::int4, points
            FROM stats_kill_rows(killmail_ids) WHERE with_kills
        ) x
        GROUP BY 1, 2, 3
    ),
    hours AS (
        INSERT INTO stats_entity_hours AS s (kind, entity_id, hour, kills, losses, kills_of_own,
                                             isk_destroyed, isk_lost, solo_kills, points)
        SELECT * FROM e ORDER BY kind, entity_id, hour
        ON CONFLICT (kind, entity_id, hour) DO UPDATE
            SET kills = s.kills + excluded.kills,
                losses = s.losses + excluded.losses,
                kills_of_own = s.kills_of_own + excluded.kills_of_own,
                isk_destroyed = s.isk_destroyed + excluded.isk_destroyed,
                isk_lost = s.isk_lost + excluded.isk_lost,
                solo_kills = s.solo_kills + excluded.solo_kills,
                points = s.points + excluded.points
    )
    INSERT INTO stats_entity_days AS s (kind, entity_id, day, kills, losses, kills_of_own,
                                        isk_destroyed, isk_lost, solo_kills, points)
    SELECT kind, entity_id, stats_day(hour), sum(kills), sum(losses), sum(kills_of_own),
           sum(isk_destroyed), sum(isk_lost), sum(solo_kills), sum(points)
    FROM e GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
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

-- The statement triggers' halves, as before (a live batch's killmails, then its attackers).
CREATE OR REPLACE FUNCTION stats_add_killmails(killmail_ids int8[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM stats_add_places(killmail_ids);
    PERFORM stats_add_entities(killmail_ids, true, false);
END
$$;

CREATE OR REPLACE FUNCTION stats_add_attackers(killmail_ids int8[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM stats_add_entities(killmail_ids, false, true);
END
$$;

-- Both sides of killmails stored with their attackers, in one call: what a history batch runs
-- in place of the triggers, and the rebuild.
CREATE FUNCTION stats_add(killmail_ids int8[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM stats_lock();
    PERFORM stats_add_places(killmail_ids);
    PERFORM stats_add_entities(killmail_ids, true, true);
END
$$;

CREATE OR REPLACE FUNCTION stats_killmails_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids int8[];
BEGIN
    IF current_setting('killreport.stats_deferred', true) = 'on' THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(killmail_id) INTO ids FROM new_rows;
    IF ids IS NOT NULL THEN
        PERFORM stats_lock();
        PERFORM stats_add_killmails(ids);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION stats_attackers_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids int8[];
BEGIN
    IF current_setting('killreport.stats_deferred', true) = 'on' THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(DISTINCT killmail_id) INTO ids FROM new_rows;
    IF ids IS NOT NULL THEN
        PERFORM stats_lock();
        PERFORM stats_add_attackers(ids);
    END IF;
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
    -- Every month is due again (20261205000100_stats_months.sql).
    DELETE FROM stats_months_ready;
    SELECT coalesce(array_agg(killmail_id), '{}') INTO ids FROM killmails;
    PERFORM stats_add(ids);
END $$;
