-- Delivery ids arrive in time order and pruning reads them by time: a BRIN index serves the
-- prune at a fraction of what a B-tree costs on every webhook's insert.
DROP INDEX processed_events_processed_at_idx;
CREATE INDEX processed_events_processed_at_brin ON processed_events USING brin (processed_at);

-- Leave room on each page so an update of a user (no indexed column changes) can stay on its
-- page as a HOT update and write no index entry.
ALTER TABLE users SET (fillfactor = 90);
