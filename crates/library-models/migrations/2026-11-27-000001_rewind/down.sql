DROP TABLE resubmit;
ALTER TABLE local_state DROP COLUMN rewind_to;
UPDATE library_meta SET value = '1' WHERE key = 'schema_version';
