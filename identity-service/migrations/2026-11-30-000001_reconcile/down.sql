DROP TABLE reconcile_seen;
ALTER TABLE users DROP COLUMN source_event_id, DROP COLUMN source_event_time;
