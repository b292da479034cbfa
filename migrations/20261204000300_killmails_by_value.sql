-- `killmails(orderBy: VALUE)`: most valuable first, then by id, killmails without a value last,
-- keyset-paginated on (total_value, killmail_id). The index it replaces (values only, without
-- the ids or the killmails that have none) served `mostValuable` alone, which this one serves
-- too.
DROP INDEX killmails_total_value;
CREATE INDEX killmails_value ON killmails (total_value DESC NULLS LAST, killmail_id DESC);
