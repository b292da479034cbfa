-- Characters, corporations and alliances as ESI describes them (worker-enrich), beside the
-- names in entity_names (kept there too, so that every name lookup stays one table). A row is
-- made when the id is first seen on a killmail (`last_seen_at`: the newest killmail time it was
-- seen on) and filled in by ESI; `updated_at` is NULL until ESI has described it once.
CREATE TABLE characters (
    character_id   int8 PRIMARY KEY,
    name           text,
    corporation_id int8,
    alliance_id    int8,
    faction_id     int8,
    -- When POST /characters/affiliation/ last answered for it.
    affiliation_at timestamptz,
    last_seen_at   timestamptz,
    updated_at     timestamptz
);
-- The scheduled refresh: pilots seen lately whose affiliation is oldest.
CREATE INDEX characters_recent ON characters (last_seen_at DESC);

CREATE TABLE corporations (
    corporation_id int8 PRIMARY KEY,
    name           text,
    ticker         text,
    member_count   int4,
    alliance_id    int8,
    faction_id     int8,
    ceo_id         int8,
    date_founded   timestamptz,
    last_seen_at   timestamptz,
    updated_at     timestamptz
);
CREATE INDEX corporations_alliance ON corporations (alliance_id) WHERE alliance_id IS NOT NULL;

CREATE TABLE alliances (
    alliance_id             int8 PRIMARY KEY,
    name                    text,
    ticker                  text,
    executor_corporation_id int8,
    faction_id              int8,
    date_founded            timestamptz,
    -- Members of its corporations, summed; and how many corporations it has.
    member_count            int4,
    corporation_count       int4,
    last_seen_at            timestamptz,
    updated_at              timestamptz
);

-- One row per entity and UTC day it was described on: the counts of that day's last refresh.
CREATE TABLE corporation_snapshots (
    corporation_id int8 NOT NULL,
    day            date NOT NULL,
    member_count   int4 NOT NULL,
    PRIMARY KEY (corporation_id, day)
);
CREATE TABLE alliance_snapshots (
    alliance_id       int8 NOT NULL,
    day               date NOT NULL,
    member_count      int4 NOT NULL,
    corporation_count int4 NOT NULL,
    PRIMARY KEY (alliance_id, day)
);

-- worker-enrich's own schedule, one row: how far it has looked through the killmails for ids
-- first seen (by ingest sequence), when it last queued the affiliations of recent pilots, and
-- the last day it queued the daily snapshots. Whoever holds the row's lock does the round.
CREATE TABLE enrich_schedule (
    singleton       bool PRIMARY KEY DEFAULT true CHECK (singleton),
    scanned_seq     int8 NOT NULL DEFAULT 0,
    affiliations_at timestamptz,
    snapshots_on    date
);
INSERT INTO enrich_schedule DEFAULT VALUES;
