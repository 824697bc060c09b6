-- The sync log: one row per sequenced change.
CREATE TABLE sync_log (
    seq           INTEGER PRIMARY KEY NOT NULL,
    epoch         BIGINT   NOT NULL,
    origin_device BLOB     NOT NULL,
    origin_seq    BIGINT   NOT NULL,
    hlc           BIGINT   NOT NULL,
    model         TEXT     NOT NULL,
    record        BLOB     NOT NULL,
    change_type   SMALLINT NOT NULL,
    version       BIGINT   NOT NULL,
    payload       BLOB     NOT NULL,
    checksum      BLOB     NOT NULL
);

-- Each change is sequenced at most once.
CREATE UNIQUE INDEX sync_log_origin ON sync_log (origin_device, origin_seq);

-- Key/value metadata: library_id, schema_version, floor_seq, floor_checksum.
CREATE TABLE sync_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

INSERT INTO sync_meta (key, value) VALUES ('schema_version', '1');
