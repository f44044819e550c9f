DROP TABLE purge_jobs;
ALTER TABLE rooms DROP COLUMN deleted_at;
ALTER TABLE workspaces DROP COLUMN deleted_at;
