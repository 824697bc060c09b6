DROP TABLE sync_pruned_origin;
UPDATE sync_meta SET value = '1' WHERE key = 'schema_version';
