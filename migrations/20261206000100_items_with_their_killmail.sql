-- The victim's items move into one row a killmail (issue #15: history write speed). An EVE Ref
-- day has about 16 items a killmail, each of which was a row of `items` and an entry of its
-- primary key: PostgreSQL wrote ~16 heap tuples and ~16 index entries for every killmail
-- stored. Now a killmail with items is one row and one index entry, the items as parallel
-- arrays. Measured on a history import of the three fixture days (25,767 killmails, 422,161
-- items; scripts/profile-import.sh, release builds, three runs each): `COPY items` took
-- 410-488 ms, 11-13 % of the server's statement time, `COPY killmail_items` (18,998 rows)
-- 144-176 ms, 4.3-4.7 %; the table and its index went from 28 + 13 MB to 13 MB + 0.4 MB.
--
-- The arrays hold the items in pre-order, as `items` did (a container before its contents): an
-- item's position in them (0-based) is the old item_index, and parent_index is its container's
-- position, NULL at the top level. The element types are the old columns' types, so values
-- round-trip exactly; quantity_destroyed and quantity_dropped hold NULL where ESI gave none. A
-- killmail without items has no row. Items are only read whole, by killmail
-- (`db::killmails::load`), or as type ids of a range of killmails (`unnest(item_type_id)`).
CREATE TABLE killmail_items (
    killmail_id        int8 PRIMARY KEY,
    parent_index       int4[] NOT NULL,
    item_type_id       int8[] NOT NULL,
    flag               int4[] NOT NULL,
    singleton          int4[] NOT NULL,
    quantity_destroyed int8[] NOT NULL,
    quantity_dropped   int8[] NOT NULL,
    -- One item per position in every array (the reader zips them).
    CHECK (cardinality(parent_index) = cardinality(item_type_id)
           AND cardinality(flag) = cardinality(item_type_id)
           AND cardinality(singleton) = cardinality(item_type_id)
           AND cardinality(quantity_destroyed) = cardinality(item_type_id)
           AND cardinality(quantity_dropped) = cardinality(item_type_id))
);

-- The store wrote each killmail's item_index as 0, 1, 2, …: positions are those indices only if
-- none is missing, which is checked rather than assumed.
DO $$
DECLARE
    broken int8;
BEGIN
    SELECT killmail_id INTO broken FROM items
    GROUP BY killmail_id
    HAVING min(item_index) <> 0 OR max(item_index) <> count(*) - 1
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'killmail %: its item_index values are not 0, 1, 2, …', broken;
    END IF;
END $$;

INSERT INTO killmail_items (
    killmail_id, parent_index, item_type_id, flag, singleton, quantity_destroyed,
    quantity_dropped)
SELECT killmail_id,
       array_agg(parent_index ORDER BY item_index),
       array_agg(item_type_id ORDER BY item_index),
       array_agg(flag ORDER BY item_index),
       array_agg(singleton ORDER BY item_index),
       array_agg(quantity_destroyed ORDER BY item_index),
       array_agg(quantity_dropped ORDER BY item_index)
FROM items
GROUP BY killmail_id;

DROP TABLE items;
