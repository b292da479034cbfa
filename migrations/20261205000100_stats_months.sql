-- Statistics per UTC month, so that a top list or an entity's figures over a year or all time
-- read a dozen months instead of hundreds of days (src/stats/). Unlike the day and hour
-- tables, the months are not kept by the writers' triggers, which would add a third of their
-- work to every stored killmail: they are rolled up from the day tables once a month has
-- ended (`stats_refresh_month`, run by the server's statistics task and `queue stats
-- rebuild`, whose stats_rebuild() empties stats_months_ready: see 20261205001000), and a
-- month is read only while it is ready and nothing was written to it since:
--
-- * `stats_months_ready`: the months rolled up, and when.
-- * `stats_months_stale`: a row for each write to a month that had ended (a killmail arriving
--   late, a revaluation); a writer adds it in the transaction that changes the days, so a
--   reader sees the change and the mark together, or neither. A roll-up deletes the marks it
--   saw before it read the days, and only those: a mark committed meanwhile stays.
--
-- Writers mark a month from a day before it ends, and roll-ups wait until a day after it ended,
-- so a writer that saw a month still running committed (its transactions last seconds) long
-- before the month is rolled up.

CREATE TABLE stats_entity_months (
    kind          int2   NOT NULL,
    entity_id     int8   NOT NULL,
    month         date   NOT NULL,
    kills         int4   NOT NULL DEFAULT 0,
    losses        int4   NOT NULL DEFAULT 0,
    kills_of_own  int4   NOT NULL DEFAULT 0,
    isk_destroyed float8 NOT NULL DEFAULT 0,
    isk_lost      float8 NOT NULL DEFAULT 0,
    solo_kills    int4   NOT NULL DEFAULT 0,
    points        int8   NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, entity_id, month)
);
CREATE INDEX stats_entity_months_top ON stats_entity_months (kind, month, kills DESC)
    INCLUDE (entity_id, isk_destroyed);

CREATE TABLE stats_months (
    dimension int2   NOT NULL,
    key       int8   NOT NULL,
    month     date   NOT NULL,
    killmails int4   NOT NULL DEFAULT 0,
    isk       float8 NOT NULL DEFAULT 0,
    PRIMARY KEY (dimension, key, month)
);
CREATE INDEX stats_months_month ON stats_months (dimension, month);

CREATE TABLE stats_months_ready (
    month        date PRIMARY KEY,
    refreshed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stats_months_stale (
    id    int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    month date NOT NULL
);
CREATE INDEX stats_months_stale_month ON stats_months_stale (month);

-- The first day of a time's UTC month, and of a day's month.
CREATE FUNCTION stats_month(t timestamptz) RETURNS date LANGUAGE sql IMMUTABLE AS
$$ SELECT date_trunc('month', t AT TIME ZONE 'UTC')::date $$;
CREATE FUNCTION stats_month(day date) RETURNS date LANGUAGE sql IMMUTABLE AS
$$ SELECT date_trunc('month', day::timestamp)::date $$;

-- Marks the ended months (and a month in its last day) that a statement wrote killmails of.
CREATE FUNCTION stats_months_mark() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    running timestamptz := date_trunc('month', (clock_timestamp() + interval '1 day')
                                               AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
BEGIN
    INSERT INTO stats_months_stale (month)
    SELECT DISTINCT stats_month(killmail_time) FROM new_rows WHERE killmail_time < running;
    RETURN NULL;
END $$;

CREATE TRIGGER stats_months_inserted AFTER INSERT ON killmails
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_months_mark();
CREATE TRIGGER stats_months_updated AFTER UPDATE ON killmails
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_months_mark();

-- Rolls month `m` up from its days. One roll-up at a time (an advisory lock of its own);
-- writers are not held up.
CREATE FUNCTION stats_refresh_month(m date) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    seen int8[];
    next date := (m + interval '1 month')::date;
BEGIN
    PERFORM pg_advisory_xact_lock(7017280556954416500);
    SELECT coalesce(array_agg(id), '{}') INTO seen FROM stats_months_stale WHERE month = m;
    DELETE FROM stats_entity_months WHERE month = m;
    DELETE FROM stats_months WHERE month = m;
    INSERT INTO stats_entity_months
        (kind, entity_id, month, kills, losses, kills_of_own, isk_destroyed, isk_lost,
         solo_kills, points)
    SELECT kind, entity_id, m, sum(kills), sum(losses), sum(kills_of_own), sum(isk_destroyed),
           sum(isk_lost), sum(solo_kills), sum(points)
    FROM stats_entity_days WHERE day >= m AND day < next
    GROUP BY kind, entity_id;
    INSERT INTO stats_months (dimension, key, month, killmails, isk)
    SELECT dimension, key, m, sum(killmails), sum(isk)
    FROM stats_days WHERE day >= m AND day < next
    GROUP BY dimension, key;
    DELETE FROM stats_months_stale WHERE id = ANY(seen);
    INSERT INTO stats_months_ready (month) VALUES (m)
    ON CONFLICT (month) DO UPDATE SET refreshed_at = now();
END $$;

-- The months a roll-up is due for: ended more than a day ago, holding killmails, and not
-- ready or written since.
CREATE FUNCTION stats_months_due() RETURNS SETOF date LANGUAGE sql STABLE AS $$
    SELECT month FROM (
        SELECT DISTINCT stats_month(day) AS month FROM stats_days
        WHERE dimension = 0 AND key = 0 AND day < stats_month(clock_timestamp() - interval '1 day')
    ) m
    WHERE month NOT IN (SELECT month FROM stats_months_ready)
       OR month IN (SELECT month FROM stats_months_stale)
    ORDER BY 1
$$;
