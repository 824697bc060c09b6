ALTER TABLE location DROP COLUMN field_stamps;
ALTER TABLE tag DROP COLUMN field_stamps;
ALTER TABLE collection DROP COLUMN field_stamps;
ALTER TABLE user_metadata DROP COLUMN field_stamps;
UPDATE library_meta SET value = '2' WHERE key = 'schema_version';
