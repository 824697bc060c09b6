-- Records people edit by hand merge per field: each field (and the tombstone) carries its own
-- (hlc, device) stamp, 24 bytes each in declaration order (see library_models::FieldStamps).
-- Rows written before this migration have an empty blob: every field reads as the record's
-- stamp, which is exactly what per-record merging gave them.
ALTER TABLE location ADD COLUMN field_stamps BLOB NOT NULL DEFAULT x'';
ALTER TABLE tag ADD COLUMN field_stamps BLOB NOT NULL DEFAULT x'';
ALTER TABLE collection ADD COLUMN field_stamps BLOB NOT NULL DEFAULT x'';
ALTER TABLE user_metadata ADD COLUMN field_stamps BLOB NOT NULL DEFAULT x'';

UPDATE library_meta SET value = '3' WHERE key = 'schema_version';
