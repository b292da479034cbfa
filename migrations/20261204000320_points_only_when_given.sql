-- A killmail whose block has no `points` (every estimate: killreport does not compute them) got
-- -2147483648 points, since greatest() ignores the NULL it was meant to clamp. The column is made
-- again, NULL without points (the statistics count it 0), and the aggregates recomputed from the
-- rows.
ALTER TABLE killmails DROP COLUMN points;
ALTER TABLE killmails ADD COLUMN points int4 GENERATED ALWAYS AS (
    CASE WHEN coalesce(zkb -> 'points', estimate -> 'points') IS NOT NULL THEN
        least(greatest(round(coalesce((zkb ->> 'points')::float8, (estimate ->> 'points')::float8)),
                       -2147483648), 2147483647)::int4
    END) STORED;
SELECT stats_rebuild();
