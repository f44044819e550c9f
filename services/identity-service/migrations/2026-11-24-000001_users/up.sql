-- Users mirrored from Clerk. Owned by identity-service.
CREATE TABLE users (
    clerk_id          text PRIMARY KEY,
    name              text NOT NULL,
    email             text NOT NULL DEFAULT '',
    image_url         text NOT NULL DEFAULT '',
    -- Clerk's `updated_at` of the state last written by a webhook; NULL while only StoreUser wrote.
    source_updated_at timestamptz,
    -- `iat` of the user token whose claims were last written by StoreUser.
    claims_seen_at    timestamptz,
    -- Set when Clerk deleted the user: the row stays as a final tombstone (Clerk never reuses
    -- ids) with its personal data cleared, so the row lock orders deletes against upserts.
    deleted_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Delivery ids already applied (the `svix-id`), kept >= 72 h then pruned.
CREATE TABLE processed_events (
    event_id     text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at);
