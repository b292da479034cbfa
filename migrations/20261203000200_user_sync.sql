-- worker-user-killmails' own bookkeeping, beside sso_logins (whose last_sync_at and
-- newest_killmail_id it writes after each sync of a pilot's history):
-- when each pilot's sync job was last queued, so the scheduler queues it once per interval
-- however long it waits in the queue; and how far each director's corporation history is known,
-- shared by every director of that corporation.

CREATE TABLE user_sync_queued (
    character_id int8 PRIMARY KEY REFERENCES sso_logins ON DELETE CASCADE,
    queued_at    timestamptz NOT NULL
);

CREATE TABLE user_sync_corporations (
    corporation_id     int8 PRIMARY KEY,
    newest_killmail_id int8 NOT NULL,
    synced_at          timestamptz NOT NULL DEFAULT now()
);
