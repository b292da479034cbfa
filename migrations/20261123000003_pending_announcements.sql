-- The announcement outbox: a row per stored killmail not yet announced on Redis, written in the
-- killmail's own transaction and deleted in the transaction that publishes it, so a killmail
-- committed while Redis is down (or by a worker that then died) is still announced, once.
CREATE TABLE pending_announcements (
    seq         int8 PRIMARY KEY,
    killmail_id int8 NOT NULL REFERENCES killmails ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
