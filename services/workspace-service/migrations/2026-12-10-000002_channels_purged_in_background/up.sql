-- Channels are deleted in two steps, like rooms: `DeleteChannel` hides the channel
-- (`deleted_at`), which hides it and its messages from every RPC, and queues a purge job; the
-- purge worker then deletes its messages and read receipts in bounded chunks, and the row last.
ALTER TABLE channels ADD COLUMN deleted_at timestamptz;

-- A hidden channel's name is free at once.
ALTER TABLE channels DROP CONSTRAINT channels_workspace_id_name_key;
CREATE UNIQUE INDEX channels_live_name_key ON channels (workspace_id, name) WHERE deleted_at IS NULL;

ALTER TABLE purge_jobs DROP CONSTRAINT purge_jobs_kind_check,
    ADD CONSTRAINT purge_jobs_kind_check CHECK (kind IN ('workspace', 'room', 'channel'));
