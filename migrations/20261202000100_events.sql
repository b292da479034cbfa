-- The event log (DESIGN.md, "Events"): every event of the bus other than `killmail` (those are
-- the stored killmails themselves, by `seq`), kept for EVENT_RETENTION_DAYS. Writers take an
-- advisory lock before drawing an id and hold it until they commit, so ids become visible in
-- the order they were drawn and a reader's cursor never skips a lower id committed later.
CREATE TABLE events (
    id      int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type    text NOT NULL,
    data    jsonb NOT NULL,
    sent_at timestamptz NOT NULL
);
CREATE INDEX events_sent_at ON events (sent_at);
