-- Days of EVE Ref's archives that `queue backfill` imported whole: a day listed here is skipped
-- by the next backfill. A day is recorded only once its archive was read to the end and every
-- killmail in it committed, so an interrupted or broken day is tried again.
CREATE TABLE backfill_days (
    day         date PRIMARY KEY,
    -- Killmails the archive held (stored now or already present) and those rejected.
    killmails   int4 NOT NULL,
    rejected    int4 NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now()
);
