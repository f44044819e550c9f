-- A job may come back for another round (job-queue's `Attempt::Later`): a Liveblocks room is
-- deleted again once every token issued before its first deletion has expired.
ALTER TABLE liveblocks_cleanup_jobs ADD COLUMN round integer NOT NULL DEFAULT 0;
ALTER TABLE purge_jobs ADD COLUMN round integer NOT NULL DEFAULT 0;
