-- The template of the staging table a batch of killmails is loaded into (binary COPY) before
-- one INSERT … SELECT … ON CONFLICT merges it into killmails (see src/db/killmails.rs). Each
-- connection loads into a temporary table of the same name made LIKE this one (ON COMMIT DELETE
-- ROWS: emptied at each commit, unlogged, unindexed), which shadows it, as pg_temp comes first
-- in the search path; this one stays empty, and gives the statements a table to be checked
-- against at compile time.
CREATE UNLOGGED TABLE killmail_staging (
    ord                   int4 NOT NULL,
    killmail_id           int8 NOT NULL,
    hash                  text NOT NULL,
    killmail_time         timestamptz NOT NULL,
    solar_system_id       int8 NOT NULL,
    moon_id               int8,
    war_id                int8,
    victim_character_id   int8,
    victim_corporation_id int8,
    victim_alliance_id    int8,
    victim_faction_id     int8,
    victim_ship_type_id   int8 NOT NULL,
    victim_damage_taken   int8 NOT NULL,
    victim_position_x     float8,
    victim_position_y     float8,
    victim_position_z     float8,
    attacker_count        int4 NOT NULL,
    zkb                   jsonb,
    source                text NOT NULL
);

-- Attackers and items are written only by the store, in the transaction that adds their
-- killmail, for the killmails that statement returned, and killmails are never deleted: the
-- foreign keys checked nothing the store does not already ensure, and checking them row by row
-- cost more than writing the rows (an EVE Ref day has 16 items a killmail: 4.5 times faster
-- COPY of items without it).
ALTER TABLE attackers DROP CONSTRAINT attackers_killmail_id_fkey;
ALTER TABLE items DROP CONSTRAINT items_killmail_id_fkey;

-- Stretches of a live feed that were skipped rather than read: after an outage longer than
-- R2Z2 keeps its files, the poller resynchronises to the newest sequence and records here what
-- it jumped over and the hours it lost, then repairs those hours from zKillboard's daily
-- history (`queue repair` does the same by hand); `repaired_at` is set once that is done.
CREATE TABLE feed_gaps (
    id            int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    feed          text NOT NULL,
    -- The sequences jumped over: first_sequence..=last_sequence.
    first_sequence int8 NOT NULL,
    last_sequence  int8 NOT NULL,
    -- The hours lost: from the last progress before the outage to the resynchronisation.
    lost_from     timestamptz NOT NULL,
    lost_to       timestamptz NOT NULL,
    detected_at   timestamptz NOT NULL DEFAULT now(),
    repaired_at   timestamptz,
    -- What the repair found missing and queued.
    queued        int4
);
