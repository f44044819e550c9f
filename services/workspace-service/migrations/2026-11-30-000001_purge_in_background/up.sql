-- Deletes in two steps. The command marks the workspace (or room) deleted, which hides it and
-- everything in it from every RPC, and queues a purge job in the same transaction; the purge
-- worker then deletes the rows in bounded chunks, each in a short transaction of its own.
ALTER TABLE workspaces ADD COLUMN deleted_at timestamptz;
ALTER TABLE rooms ADD COLUMN deleted_at timestamptz;

-- One job per deleted workspace or room, leased like the Liveblocks outbox.
CREATE TABLE purge_jobs (
    target_id       uuid PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('workspace', 'room')),
    rows_purged     bigint NOT NULL DEFAULT 0,
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    leased_until    timestamptz,
    lease_token     uuid,
    last_error      text
);
CREATE INDEX purge_jobs_due_idx ON purge_jobs (next_attempt_at);
