-- The killmail store: every field of the ESI killmail, normalised so it can be queried, and
-- rebuilt exactly (see src/db/killmails.rs).

-- The ingest sequence. Writers take an advisory lock before drawing from it, so values are
-- handed out in commit order and a subscriber's cursor never skips a later-committed lower value.
CREATE SEQUENCE killmail_seq AS int8;

CREATE TABLE killmails (
    killmail_id           int8 PRIMARY KEY,
    hash                  text NOT NULL,
    seq                   int8 NOT NULL UNIQUE DEFAULT nextval('killmail_seq'),
    killmail_time         timestamptz NOT NULL,
    solar_system_id       int8 NOT NULL,
    region_id             int8,
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
    -- zKillboard's block as delivered, and the values filtered on read out of it.
    zkb                   jsonb,
    total_value           float8 GENERATED ALWAYS AS ((zkb ->> 'totalValue')::float8) STORED,
    npc                   bool GENERATED ALWAYS AS ((zkb ->> 'npc')::bool) STORED,
    solo                  bool GENERATED ALWAYS AS ((zkb ->> 'solo')::bool) STORED,
    source                text NOT NULL,
    ingested_at           timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE killmail_seq OWNED BY killmails.seq;

CREATE INDEX killmails_time ON killmails (killmail_time DESC, killmail_id DESC);
CREATE INDEX killmails_victim_character ON killmails (victim_character_id, killmail_time DESC, killmail_id DESC)
    WHERE victim_character_id IS NOT NULL;
CREATE INDEX killmails_victim_corporation ON killmails (victim_corporation_id, killmail_time DESC, killmail_id DESC)
    WHERE victim_corporation_id IS NOT NULL;
CREATE INDEX killmails_victim_alliance ON killmails (victim_alliance_id, killmail_time DESC, killmail_id DESC)
    WHERE victim_alliance_id IS NOT NULL;
CREATE INDEX killmails_victim_ship ON killmails (victim_ship_type_id, killmail_time DESC, killmail_id DESC);
CREATE INDEX killmails_system ON killmails (solar_system_id, killmail_time DESC, killmail_id DESC);
CREATE INDEX killmails_region ON killmails (region_id, killmail_time DESC, killmail_id DESC);
CREATE INDEX killmails_total_value ON killmails (total_value DESC) WHERE total_value IS NOT NULL;

CREATE TABLE attackers (
    killmail_id     int8 NOT NULL REFERENCES killmails ON DELETE CASCADE,
    attacker_index  int4 NOT NULL,
    -- Copied from the killmail so "involving X, newest first" is one index range.
    killmail_time   timestamptz NOT NULL,
    character_id    int8,
    corporation_id  int8,
    alliance_id     int8,
    faction_id      int8,
    ship_type_id    int8,
    weapon_type_id  int8,
    damage_done     int8 NOT NULL,
    final_blow      bool NOT NULL,
    security_status float8 NOT NULL,
    PRIMARY KEY (killmail_id, attacker_index)
);
CREATE INDEX attackers_character ON attackers (character_id, killmail_time DESC, killmail_id DESC)
    WHERE character_id IS NOT NULL;
CREATE INDEX attackers_corporation ON attackers (corporation_id, killmail_time DESC, killmail_id DESC)
    WHERE corporation_id IS NOT NULL;
CREATE INDEX attackers_alliance ON attackers (alliance_id, killmail_time DESC, killmail_id DESC)
    WHERE alliance_id IS NOT NULL;
CREATE INDEX attackers_ship ON attackers (ship_type_id, killmail_time DESC, killmail_id DESC)
    WHERE ship_type_id IS NOT NULL;

-- The victim's items as a tree: item_index is the pre-order position, parent_index the
-- container's position (NULL at the top level).
CREATE TABLE items (
    killmail_id        int8 NOT NULL REFERENCES killmails ON DELETE CASCADE,
    item_index         int4 NOT NULL,
    parent_index       int4,
    item_type_id       int8 NOT NULL,
    flag               int4 NOT NULL,
    singleton          int4 NOT NULL,
    quantity_destroyed int8,
    quantity_dropped   int8,
    PRIMARY KEY (killmail_id, item_index)
);

-- Names of characters, corporations, alliances and factions, resolved through ESI.
CREATE TABLE entity_names (
    id          int8 PRIMARY KEY,
    category    text NOT NULL,
    name        text NOT NULL,
    resolved_at timestamptz NOT NULL DEFAULT now()
);

-- Where each live feed has got to: the last sequence whose job RabbitMQ confirmed.
CREATE TABLE feed_cursors (
    feed       text PRIMARY KEY,
    sequence   int8 NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
