-- The library database: syncable model tables, then local (never synced) state.
--
-- Every syncable table has the same five sync columns: uuid (16-byte BLOB, primary key),
-- version, hlc, device_id (last writer) and tombstone. There are deliberately NO foreign keys:
-- rows are merged independently by last-writer-wins, so a row may arrive before the row it
-- refers to (see the missing-parent rule in the library-models crate docs).
-- Tables are WITHOUT ROWID: the uuid is the only b-tree, and UUIDv7 keys append at its end.

CREATE TABLE device (
    uuid            BLOB PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL,
    os              TEXT NOT NULL,
    version         BIGINT NOT NULL,
    hlc             BIGINT NOT NULL,
    device_id       BLOB NOT NULL,
    tombstone       BOOLEAN NOT NULL,
    -- Local, not synced: this device's persisted leadership state (see leadership crate).
    sync_leadership BLOB
) WITHOUT ROWID;

CREATE TABLE location (
    uuid         BLOB PRIMARY KEY NOT NULL,
    owner_device BLOB NOT NULL,
    name         TEXT NOT NULL,
    path         TEXT NOT NULL,
    version      BIGINT NOT NULL,
    hlc          BIGINT NOT NULL,
    device_id    BLOB NOT NULL,
    tombstone    BOOLEAN NOT NULL
) WITHOUT ROWID;

CREATE TABLE tag (
    uuid      BLOB PRIMARY KEY NOT NULL,
    name      TEXT NOT NULL,
    color     TEXT,
    version   BIGINT NOT NULL,
    hlc       BIGINT NOT NULL,
    device_id BLOB NOT NULL,
    tombstone BOOLEAN NOT NULL
) WITHOUT ROWID;

CREATE TABLE collection (
    uuid        BLOB PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    description TEXT,
    version     BIGINT NOT NULL,
    hlc         BIGINT NOT NULL,
    device_id   BLOB NOT NULL,
    tombstone   BOOLEAN NOT NULL
) WITHOUT ROWID;

CREATE TABLE user_metadata (
    uuid      BLOB PRIMARY KEY NOT NULL,
    entry     BLOB,
    note      TEXT,
    favorite  BOOLEAN NOT NULL,
    hidden    BOOLEAN NOT NULL,
    version   BIGINT NOT NULL,
    hlc       BIGINT NOT NULL,
    device_id BLOB NOT NULL,
    tombstone BOOLEAN NOT NULL
) WITHOUT ROWID;

-- The UserMetadata-Tag link: its uuid is derived from (user_metadata, tag), so adding and
-- removing the same link on two devices are writes to ONE record and converge by LWW.
CREATE TABLE user_metadata_tag (
    uuid          BLOB PRIMARY KEY NOT NULL,
    user_metadata BLOB NOT NULL,
    tag           BLOB NOT NULL,
    version       BIGINT NOT NULL,
    hlc           BIGINT NOT NULL,
    device_id     BLOB NOT NULL,
    tombstone     BOOLEAN NOT NULL
) WITHOUT ROWID;
CREATE INDEX user_metadata_tag_by_tag ON user_metadata_tag (tag);

CREATE TABLE entry (
    uuid         BLOB PRIMARY KEY NOT NULL,
    location     BLOB NOT NULL,
    parent       BLOB,
    name         TEXT NOT NULL,
    kind         SMALLINT NOT NULL,
    size         BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    modified_at  BIGINT NOT NULL,
    content_hash BLOB,
    version      BIGINT NOT NULL,
    hlc          BIGINT NOT NULL,
    device_id    BLOB NOT NULL,
    tombstone    BOOLEAN NOT NULL
) WITHOUT ROWID;

-- ---- Local state: never synced, never part of the content hash. ----

-- Key/value metadata: schema_version.
CREATE TABLE library_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
INSERT INTO library_meta (key, value) VALUES ('schema_version', '1');

-- One row: this device's identity, applied seq, last origin seq and persisted HLC.
CREATE TABLE local_state (
    id          INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    device_id   BLOB NOT NULL,
    applied_seq BIGINT NOT NULL,
    origin_seq  BIGINT NOT NULL,
    hlc         BIGINT NOT NULL
);

-- Local changes not yet seen in the global log: one row per committed transaction, holding its
-- changes (consecutive origin seqs first..=last, encoded together), written in the same
-- transaction as the model changes, removed when the change carrying its last origin seq is
-- applied from the global log (the changes of one row are always sequenced together, in order).
CREATE TABLE outbox (
    last_origin_seq  INTEGER PRIMARY KEY NOT NULL,
    first_origin_seq BIGINT NOT NULL,
    changes          BLOB NOT NULL
);

-- Log entries kept but not applied: unknown model in this build, or a payload this build cannot
-- read. The whole entry is kept, encoded; retried whenever the library is opened.
CREATE TABLE pending_entries (
    seq    INTEGER PRIMARY KEY NOT NULL,
    model  TEXT NOT NULL,
    reason TEXT NOT NULL,
    entry  BLOB NOT NULL
);
