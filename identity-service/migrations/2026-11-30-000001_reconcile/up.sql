-- Ties between two states with the same Clerk `updated_at` go to the one the source said later
-- (the envelope `timestamp`, or a reconcile run's listing time), then to the greater event id.
ALTER TABLE users
    ADD COLUMN source_event_time timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN source_event_id   text NOT NULL DEFAULT '';

-- The user ids a reconcile run saw in Clerk's listing, so "held here but not in Clerk" is a
-- query, whatever the number of users. Scratch data: unlogged, removed when the run finishes
-- (or two days later, for a run that never finished).
CREATE UNLOGGED TABLE reconcile_seen (
    run_id   uuid NOT NULL,
    clerk_id text NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, clerk_id)
);
