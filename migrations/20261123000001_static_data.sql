-- Static universe and item tables, loaded from the CSVs shipped in data/sde (see src/db/sde.rs).
CREATE TABLE regions (
    region_id int8 PRIMARY KEY,
    name      text NOT NULL
);

CREATE TABLE constellations (
    constellation_id int8 PRIMARY KEY,
    name             text NOT NULL,
    region_id        int8 NOT NULL
);

CREATE TABLE solar_systems (
    solar_system_id  int8 PRIMARY KEY,
    name             text NOT NULL,
    security_status  float8,
    constellation_id int8 NOT NULL,
    region_id        int8 NOT NULL
);

CREATE TABLE item_categories (
    category_id int8 PRIMARY KEY,
    name        text NOT NULL
);

CREATE TABLE item_groups (
    group_id    int8 PRIMARY KEY,
    name        text NOT NULL,
    category_id int8 NOT NULL
);

CREATE TABLE item_types (
    type_id  int8 PRIMARY KEY,
    name     text,
    group_id int8 NOT NULL
);

-- Which version of the shipped tables is loaded, so an upgrade reloads them once.
CREATE TABLE static_data_version (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    checksum  text NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);
