-- zKillboard's `ganked` label for killmails valued by killreport (those that came without
-- zKillboard's block, whose own labels say it): a killmail is ganked when CONCORD (corporation
-- 1000125) killed one of its attackers for it. zKillboard's rule (its gank-check cron): for a
-- CONCORD kill of a pilot, each of that pilot's five latest killmails before it, in the same
-- system, at most 200 killmail ids earlier, worth at least 1M ISK, outside any war, not an awox,
-- not of a capsule, and not itself a CONCORD kill, was ganked.
--
-- Kept with every stored killmail by a statement-level trigger on attackers (a killmail's
-- attackers are written after its row, in the same transaction), from both sides, so that the
-- order of arrival does not matter: a new CONCORD kill labels the earlier killmails, and a new
-- highsec killmail looks for a CONCORD kill already stored after it. A revaluation keeps the
-- label (see `db::killmails::set_estimates`).

CREATE FUNCTION is_concord_kill(killmail int8) RETURNS bool LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM attackers WHERE killmail_id = killmail AND corporation_id = 1000125)
$$;

-- `killmail_ids`: new killmails; `concord_ids`: those of them with CONCORD among the attackers.
-- PL/pgSQL with a generic plan, as the statistics' upserts (see 20261204000100): planned once.
CREATE FUNCTION mark_ganked(killmail_ids int8[], concord_ids int8[]) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    WITH concord AS (
        -- CONCORD kills among the new killmails,
        SELECT k.killmail_id, k.victim_character_id, k.solar_system_id
        FROM killmails k
        WHERE k.killmail_id = ANY(concord_ids) AND k.victim_character_id IS NOT NULL
        UNION
        -- and those already stored of an attacker of a new highsec killmail, after it.
        SELECT c.killmail_id, c.victim_character_id, c.solar_system_id
        FROM killmails g
        JOIN attackers a ON a.killmail_id = g.killmail_id AND a.character_id IS NOT NULL
        JOIN killmails c ON c.victim_character_id = a.character_id
             AND c.killmail_id > g.killmail_id AND c.killmail_id <= g.killmail_id + 200
             AND c.solar_system_id = g.solar_system_id
        WHERE g.killmail_id = ANY(killmail_ids) AND g.zkb IS NULL
          AND g.estimate -> 'labels' ? 'loc:highsec'
          AND is_concord_kill(c.killmail_id)
    ),
    ganked AS (
        SELECT DISTINCT g.killmail_id
        FROM concord c
        CROSS JOIN LATERAL (
            SELECT a.killmail_id
            FROM attackers a
            WHERE a.character_id = c.victim_character_id AND a.killmail_id < c.killmail_id
            ORDER BY a.killmail_time DESC, a.killmail_id DESC
            LIMIT 5
        ) latest
        JOIN killmails g ON g.killmail_id = latest.killmail_id
        LEFT JOIN item_types t ON t.type_id = g.victim_ship_type_id
        WHERE g.solar_system_id = c.solar_system_id
          AND c.killmail_id - g.killmail_id <= 200
          AND g.zkb IS NULL AND g.estimate IS NOT NULL
          AND coalesce(g.total_value, 0) >= 1000000
          AND g.war_id IS NULL
          AND g.awox IS NOT TRUE
          AND t.group_id IS DISTINCT FROM 29
          AND NOT is_concord_kill(g.killmail_id)
    )
    UPDATE killmails k
    SET estimate = jsonb_set(k.estimate, '{labels}',
                             coalesce(k.estimate -> 'labels', '[]') || '["ganked"]')
    FROM ganked
    WHERE k.killmail_id = ganked.killmail_id
      AND NOT coalesce(k.estimate -> 'labels' ? 'ganked', false);
END
$$;

CREATE FUNCTION ganked_attackers_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids int8[];
    concord_ids int8[];
BEGIN
    SELECT array_agg(DISTINCT killmail_id),
           coalesce(array_agg(DISTINCT killmail_id) FILTER (WHERE corporation_id = 1000125), '{}')
    INTO ids, concord_ids
    FROM new_rows;
    IF ids IS NOT NULL THEN
        PERFORM mark_ganked(ids, concord_ids);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ganked_attackers_inserted AFTER INSERT ON attackers
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ganked_attackers_inserted();
