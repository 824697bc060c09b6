DROP TABLE conflict_log;
ALTER TABLE device DROP COLUMN endpoint;
UPDATE library_meta SET value = '3' WHERE key = 'schema_version';
