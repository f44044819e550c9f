-- Ties between two states with the same Clerk `updated_at` go to the one the source said later
-- (the envelope `timestamp`, or a reconcile run's listing time), then to the greater event id.
ALTER TABLE users
    ADD COLUMN source_event_time timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN source_event_id   text NOT NULL DEFAULT '';

-- Reconcile walks Clerk's listing and ours in the same order (Clerk's `created_at`, then id):
-- each page of the listing is compared with the users held in the stretch it covers.
CREATE INDEX users_created_idx ON users (created_at, clerk_id);

-- Users held that a reconcile run did not find in Clerk's listing: the run's deletion
-- candidates, each confirmed with Clerk before anything is deleted. As many rows as the data
-- differs, not as there are users. Removed when the run finishes (or two days later).
CREATE TABLE reconcile_candidates (
    run_id      uuid NOT NULL,
    clerk_id    text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, clerk_id)
);
