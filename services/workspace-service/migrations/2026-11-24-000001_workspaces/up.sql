-- Workspaces (= Clerk organizations) and their contents. Owned by workspace-service.
-- Every foreign key is indexed: the cascade delete walks them.

CREATE TABLE workspaces (
    id                uuid PRIMARY KEY,
    clerk_org_id      text NOT NULL UNIQUE,
    name              text NOT NULL,
    slug              text,
    owner_clerk_id    text,
    -- Clerk's `updated_at` of the state held, for ordering.
    source_updated_at timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- A deleted organization. Final: Clerk never reuses ids.
CREATE TABLE workspace_tombstones (
    clerk_org_id text PRIMARY KEY,
    deleted_at   timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

-- Memberships are keyed by Clerk ids, not by workspace row, so they can arrive before the
-- organization. A deleted membership stays as a row with deleted = true until a newer event.
CREATE TABLE memberships (
    clerk_org_id      text NOT NULL,
    clerk_user_id     text NOT NULL,
    role              text NOT NULL,
    deleted           boolean NOT NULL DEFAULT false,
    source_updated_at timestamptz NOT NULL,
    PRIMARY KEY (clerk_org_id, clerk_user_id)
);
CREATE INDEX memberships_user_idx ON memberships (clerk_user_id);

-- Users deleted in Clerk. Final.
CREATE TABLE removed_users (
    clerk_user_id text PRIMARY KEY,
    removed_at    timestamptz NOT NULL
);

CREATE TABLE channels (
    id           uuid PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id),
    name         text NOT NULL,
    created_by   text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, name)
);

CREATE TABLE messages (
    id              uuid PRIMARY KEY,
    channel_id      uuid NOT NULL REFERENCES channels (id),
    author_clerk_id text NOT NULL,
    body            text NOT NULL,
    author_deleted  boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL,
    edited_at       timestamptz
);
CREATE INDEX messages_channel_idx ON messages (channel_id, created_at DESC, id DESC);
CREATE INDEX messages_author_idx ON messages (author_clerk_id);

CREATE TABLE read_receipts (
    channel_id    uuid NOT NULL REFERENCES channels (id),
    clerk_user_id text NOT NULL,
    last_read_at  timestamptz NOT NULL,
    PRIMARY KEY (channel_id, clerk_user_id)
);
CREATE INDEX read_receipts_user_idx ON read_receipts (clerk_user_id);

CREATE TABLE rooms (
    id           uuid PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id),
    kind         text NOT NULL CHECK (kind IN ('document', 'code', 'whiteboard', 'conference')),
    name         text NOT NULL,
    created_by   text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rooms_workspace_idx ON rooms (workspace_id, created_at, id);

CREATE TABLE documents (
    id         uuid PRIMARY KEY,
    room_id    uuid NOT NULL REFERENCES rooms (id),
    name       text NOT NULL,
    created_by text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_room_idx ON documents (room_id, created_at, id);

CREATE TABLE code_files (
    id         uuid PRIMARY KEY,
    room_id    uuid NOT NULL REFERENCES rooms (id),
    name       text NOT NULL,
    language   text NOT NULL DEFAULT '',
    created_by text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX code_files_room_idx ON code_files (room_id, created_at, id);

CREATE TABLE whiteboards (
    id         uuid PRIMARY KEY,
    room_id    uuid NOT NULL REFERENCES rooms (id),
    name       text NOT NULL,
    created_by text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX whiteboards_room_idx ON whiteboards (room_id, created_at, id);

CREATE TABLE meetings (
    id           uuid PRIMARY KEY,
    room_id      uuid NOT NULL REFERENCES rooms (id),
    title        text NOT NULL,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL CHECK (ends_at > starts_at),
    cancelled_at timestamptz,
    created_by   text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meetings_room_idx ON meetings (room_id, starts_at, id);

-- Outbox of Liveblocks rooms to delete. One row per room id; a worker leases due rows
-- (FOR UPDATE SKIP LOCKED), calls Liveblocks outside any transaction, then deletes the row or
-- reschedules it. A crashed worker's lease expires and the job is retried.
CREATE TABLE liveblocks_cleanup_jobs (
    room_id         text PRIMARY KEY,
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    leased_until    timestamptz,
    lease_token     uuid,
    last_error      text
);
CREATE INDEX liveblocks_cleanup_jobs_due_idx ON liveblocks_cleanup_jobs (next_attempt_at);

-- Delivery ids already applied (the `svix-id`), kept >= 72 h then pruned.
CREATE TABLE processed_events (
    event_id     text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at);
