-- Rewinding after a divergence (design rule 5): a durable home for the discarded suffix, and the
-- pending rewind target. Both local, never synced, never part of the content hash.

-- The seq this device is rewinding its sync log to, set in the same transaction that stores
-- the suffix in `resubmit` and lowers `applied_seq`, cleared once the log is truncated. NULL
-- when no rewind is pending.
ALTER TABLE local_state ADD COLUMN rewind_to BIGINT;

-- Changes of a discarded log suffix, whatever their origin, waiting to be re-submitted to the
-- winner. `ord` keeps log order (re-submissions keep it); the origin key is unique, so storing
-- the same suffix twice is harmless. A row is removed in the transaction that applies the
-- change with its origin key from the global log.
CREATE TABLE resubmit (
    ord           INTEGER PRIMARY KEY NOT NULL,
    origin_device BLOB NOT NULL,
    origin_seq    BIGINT NOT NULL,
    change        BLOB NOT NULL
);
CREATE UNIQUE INDEX resubmit_by_origin ON resubmit (origin_device, origin_seq);

UPDATE library_meta SET value = '2' WHERE key = 'schema_version';
