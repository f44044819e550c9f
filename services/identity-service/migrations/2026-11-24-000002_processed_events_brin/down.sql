DROP INDEX processed_events_processed_at_brin;
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at);
ALTER TABLE users RESET (fillfactor);
