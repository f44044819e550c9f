DROP TABLE reconcile_candidates;
DROP INDEX users_created_idx;
ALTER TABLE users DROP COLUMN source_event_id, DROP COLUMN source_event_time;
