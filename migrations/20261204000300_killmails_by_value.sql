-- `killmails(orderBy: VALUE)`: most valuable first, then by id, keyset-paginated on
-- (coalesce(total_value, '-Infinity'), killmail_id), so that killmails without a value sort last
-- and a cursor can stand on one of them (see `db::killmails::VALUE_KEY`). The index it replaces
-- (values only, without the ids or the killmails that have none) served `mostValuable` alone,
-- which this one serves too.
DROP INDEX killmails_total_value;
CREATE INDEX killmails_value
    ON killmails ((coalesce(total_value, '-Infinity')) DESC, killmail_id DESC);
