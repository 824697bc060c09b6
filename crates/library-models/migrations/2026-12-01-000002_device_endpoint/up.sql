-- A member device's iroh endpoint id (32-byte public key): membership comes from the synced
-- device rows. Empty for rows written before it existed.
ALTER TABLE device ADD COLUMN endpoint BLOB NOT NULL DEFAULT x'';

-- The local conflict log: a change applied from the log that overwrote a local change no other
-- device had seen yet, or that lost to one. Local, never synced, never in the content hash.
-- Bounded by the write path (oldest rows dropped and counted in library_meta).
CREATE TABLE conflict_log (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms          BIGINT NOT NULL,
    seq            BIGINT NOT NULL,
    model          TEXT NOT NULL,
    record         BLOB NOT NULL,
    local_change   BLOB NOT NULL,
    remote_change  BLOB NOT NULL,
    remote_won     BOOLEAN NOT NULL
);

UPDATE library_meta SET value = '4' WHERE key = 'schema_version';
