-- What live watches report: each change of a workspace's content, recorded in the transaction
-- that makes it, numbered per workspace in commit order. `change_heads` holds each
-- workspace's last number; taking the next one locks that row until the commit, so numbers
-- commit in order and a watcher that read up to N never sees N-1 appear later. Kept
-- CHANGE_LOG_RETENTION_HOURS. NOTIFY vbase_changes (payload: the workspace id) wakes the
-- watchers of every replica; the rows are the truth.
CREATE TABLE change_heads (
    workspace_id uuid PRIMARY KEY,
    seq          bigint NOT NULL
);
CREATE TABLE change_log (
    workspace_id uuid NOT NULL,
    seq          bigint NOT NULL,
    channel_id   uuid,
    payload      bytea NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, seq)
);
CREATE INDEX change_log_recorded_brin ON change_log USING brin (recorded_at);
