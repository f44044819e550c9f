DROP INDEX purge_jobs_due_idx;
CREATE INDEX purge_jobs_due_idx ON purge_jobs (next_attempt_at);
DROP INDEX liveblocks_cleanup_jobs_due_idx;
CREATE INDEX liveblocks_cleanup_jobs_due_idx ON liveblocks_cleanup_jobs (next_attempt_at);
ALTER TABLE purge_jobs DROP COLUMN dead_at;
ALTER TABLE liveblocks_cleanup_jobs DROP COLUMN dead_at;
