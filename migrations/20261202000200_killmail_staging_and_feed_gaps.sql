-- Where a batch of killmails is loaded (binary COPY) before one INSERT … SELECT … ON CONFLICT
-- merges it into killmails (see src/db/killmails.rs): unlogged and unindexed, so loading it
-- costs little more than sending the bytes. Only the writer holding the ingest-sequence lock
-- uses it, and it empties it before it commits.
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
