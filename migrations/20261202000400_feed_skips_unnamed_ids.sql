-- Sequences of a live feed (R2Z2) that the poller skipped: each stayed missing for minutes while
-- later ones existed (expired, or never published). One row per skipped sequence, so that a
-- repair (a backfill of the days around `skipped_at`) can find them; `repaired_at` is for that
-- repair to set once the range is covered.
CREATE TABLE feed_skips (
    feed        text        NOT NULL,
    sequence    int8        NOT NULL,
    -- Why it was skipped, as the poller logged it.
    reason      text        NOT NULL,
    skipped_at  timestamptz NOT NULL DEFAULT now(),
    repaired_at timestamptz,
    PRIMARY KEY (feed, sequence)
);
CREATE INDEX feed_skips_unrepaired ON feed_skips (feed, sequence) WHERE repaired_at IS NULL;

-- Ids ESI could not name when last asked (`POST /universe/names/` knows no such id), so that
-- they are not asked again with every killmail that carries them; asked again once a day.
CREATE TABLE unnamed_ids (
    id       int8 PRIMARY KEY,
    asked_at timestamptz NOT NULL DEFAULT now()
);
