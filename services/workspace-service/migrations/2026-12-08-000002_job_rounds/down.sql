ALTER TABLE liveblocks_cleanup_jobs DROP COLUMN round;
ALTER TABLE purge_jobs DROP COLUMN round;
