-- killreport's own zKillboard-style block for a killmail that came without zKillboard's (every
-- EVE Ref import, every ESI-only job): the same keys as zkb (`totalValue`, `fittedValue`,
-- `droppedValue`, `destroyedValue`, `points`, `npc`, `solo`, `awox`, `labels`), computed from
-- item prices of the killmail's day and zKillboard's rules. The columns read by filters,
-- statistics and ordering take zKillboard's value where there is one, else this estimate; an
-- UPDATE of zkb or estimate (a revaluation when a day's prices arrive) changes them.
ALTER TABLE killmails ADD COLUMN estimate jsonb;

ALTER TABLE killmails DROP COLUMN total_value, DROP COLUMN npc, DROP COLUMN solo;
ALTER TABLE killmails
    ADD COLUMN total_value float8 GENERATED ALWAYS AS
        (coalesce((zkb ->> 'totalValue')::float8, (estimate ->> 'totalValue')::float8)) STORED,
    ADD COLUMN npc bool GENERATED ALWAYS AS
        (coalesce((zkb ->> 'npc')::bool, (estimate ->> 'npc')::bool)) STORED,
    ADD COLUMN solo bool GENERATED ALWAYS AS
        (coalesce((zkb ->> 'solo')::bool, (estimate ->> 'solo')::bool)) STORED,
    ADD COLUMN awox bool GENERATED ALWAYS AS
        (coalesce((zkb ->> 'awox')::bool, (estimate ->> 'awox')::bool)) STORED,
    -- Clamped: the sanitiser lets any JSON number through, and a cast must never refuse a row.
    ADD COLUMN points int4 GENERATED ALWAYS AS
        (least(greatest(round(coalesce((zkb ->> 'points')::float8, (estimate ->> 'points')::float8)),
                        -2147483648), 2147483647)::int4) STORED;

CREATE INDEX killmails_total_value ON killmails (total_value DESC) WHERE total_value IS NOT NULL;
