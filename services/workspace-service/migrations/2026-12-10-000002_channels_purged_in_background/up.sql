-- Channels are deleted in two steps, like rooms: `DeleteChannel` hides the channel
-- (`deleted_at`), which hides it and its messages from every RPC, and queues a purge job; the
-- purge worker then deletes its messages and read receipts in bounded chunks, and the row last.
ALTER TABLE channels ADD COLUMN deleted_at timestamptz;

-- A hidden channel's name is freed at once by renaming it `deleted:<id>`, which no channel
-- name can be. The unique constraint stays whole, so the release before this one, still
-- serving during a rollout, keeps its `ON CONFLICT (workspace_id, name)`.

ALTER TABLE purge_jobs DROP CONSTRAINT purge_jobs_kind_check,
    ADD CONSTRAINT purge_jobs_kind_check CHECK (kind IN ('workspace', 'room', 'channel'));
