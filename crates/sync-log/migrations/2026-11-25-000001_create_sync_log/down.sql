DROP TABLE sync_meta;
DROP INDEX sync_log_origin;
DROP TABLE sync_log;
