-- Per origin device, the highest origin seq that was ever pruned from the log. Pruning deletes
-- the rows whose unique origin index made re-forwarding idempotent; this table keeps that
-- knowledge, so a change forwarded again after its entry was pruned is never sequenced twice.
-- (A device's origin seqs are consecutive and forwarded in order, so the maximum is enough.)
CREATE TABLE sync_pruned_origin (
    origin_device  BLOB   PRIMARY KEY NOT NULL,
    max_origin_seq BIGINT NOT NULL
);

UPDATE sync_meta SET value = '2' WHERE key = 'schema_version';
