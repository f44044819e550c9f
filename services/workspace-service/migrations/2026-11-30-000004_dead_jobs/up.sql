-- A job that got a permanent answer, or failed too many attempts, is dead: kept and visible,
-- never leased again until an operator retries it. Workers look only at live jobs.
ALTER TABLE liveblocks_cleanup_jobs ADD COLUMN dead_at timestamptz;
ALTER TABLE purge_jobs ADD COLUMN dead_at timestamptz;
DROP INDEX liveblocks_cleanup_jobs_due_idx;
CREATE INDEX liveblocks_cleanup_jobs_due_idx ON liveblocks_cleanup_jobs (next_attempt_at) WHERE dead_at IS NULL;
DROP INDEX purge_jobs_due_idx;
CREATE INDEX purge_jobs_due_idx ON purge_jobs (next_attempt_at) WHERE dead_at IS NULL;
