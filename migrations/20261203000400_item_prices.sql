-- Item prices per day, from ESI's GET /markets/prices/ (fetched daily by worker-killmails, or by
-- `queue prices`): killreport values a killmail that came without zKillboard's block at its own
-- date, with the prices of the nearest earlier day that has them (else the nearest later). A
-- day's prices are written once, when they first arrive; the killmails that then value at that
-- day are valued again (`revalued_at` records that it was done, so a process that died halfway
-- leaves the day for the next one).
CREATE TABLE price_days (
    day         date PRIMARY KEY,
    fetched_at  timestamptz NOT NULL DEFAULT now(),
    types       int4 NOT NULL,
    revalued_at timestamptz
);

CREATE TABLE item_prices (
    day            date NOT NULL REFERENCES price_days ON DELETE CASCADE,
    type_id        int8 NOT NULL,
    average_price  float8,
    adjusted_price float8,
    PRIMARY KEY (day, type_id)
);
