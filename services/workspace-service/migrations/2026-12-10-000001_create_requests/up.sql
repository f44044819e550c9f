-- What each create that carried a request id (AIP-155: PostMessage, CreateRoom,
-- CreateRoomItem, ScheduleMeeting) made, written in the create's own transaction: a retry
-- with the same id answers that row instead of creating another. Keyed by the requester (a
-- user's Clerk id; `service`, or `service:<author>` for a service's messages), so no one's id
-- answers another's create. `parent_id` is the message's channel, the item's or meeting's
-- room, the room's workspace. Rows older than a day go with the change log's hourly prune, a
-- workspace's with its purge. No foreign key to `workspaces`: the release before this one,
-- still serving during a rollout, purges workspaces without knowing this table, and every
-- create would otherwise share-lock its workspace's row.
CREATE TABLE create_requests (
    workspace_id uuid NOT NULL,
    requester    text NOT NULL,
    request_id   uuid NOT NULL,
    kind         text NOT NULL
        CHECK (kind IN ('message', 'room', 'document', 'code_file', 'whiteboard', 'meeting')),
    parent_id    uuid NOT NULL,
    resource_id  uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, requester, request_id)
);
-- Rows arrive in time order and the prune reads them by time (as `processed_events`).
CREATE INDEX create_requests_created_at_brin ON create_requests USING brin (created_at);
