-- The origin keys of pruned entries, per origin device as ranges of origin seqs
-- [first_seq, last_seq] (disjoint, not adjacent). Pruning deletes the rows whose unique origin
-- index made re-forwarding idempotent; this table keeps that knowledge, so a change forwarded
-- again after its entry was pruned is never sequenced twice. A device's origin seqs are
-- consecutive and mostly sequenced in order, so a device has one range or a few.
CREATE TABLE sync_pruned_origin (
    origin_device BLOB   NOT NULL,
    first_seq     BIGINT NOT NULL,
    last_seq      BIGINT NOT NULL,
    PRIMARY KEY (origin_device, first_seq)
) WITHOUT ROWID;

UPDATE sync_meta SET value = '2' WHERE key = 'schema_version';
