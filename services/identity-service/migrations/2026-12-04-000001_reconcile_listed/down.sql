ALTER TABLE reconcile_candidates DROP COLUMN listed;
