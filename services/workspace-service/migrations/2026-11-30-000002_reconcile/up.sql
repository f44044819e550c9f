-- Ties between two states of an organization with the same Clerk `updated_at` go to the one the
-- source said later (the envelope `timestamp`, or a reconcile run's listing time), then to the
-- greater event id.
ALTER TABLE workspaces
    ADD COLUMN source_event_time timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN source_event_id   text NOT NULL DEFAULT '';

-- Memberships are ordered by Clerk's clock of the membership itself: which membership
-- (`clerk_membership_id`, created when) and, within one, its `updated_at`. A deleted
-- membership id is final. Rows from before this migration have no membership id ('') and are
-- ordered by `source_updated_at` alone until an event names their membership.
ALTER TABLE memberships
    ADD COLUMN clerk_membership_id   text NOT NULL DEFAULT '',
    ADD COLUMN membership_created_at timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN source_event_time     timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN source_event_id       text NOT NULL DEFAULT '',
    -- When access ended (the delete event's envelope time): tokens issued before it are refused.
    ADD COLUMN deleted_at            timestamptz,
    -- When this membership was first recorded here (reconcile deletes only older ones).
    ADD COLUMN recorded_at           timestamptz NOT NULL DEFAULT now();
UPDATE memberships SET deleted_at = source_updated_at WHERE deleted;

-- The keys a reconcile run saw in Clerk's listing (`workspace`: the organization id;
-- `membership`: `org_id/user_id`), so "held here but not in Clerk" is a query whatever the
-- size. Scratch data: unlogged, removed when the run finishes (or two days later).
CREATE UNLOGGED TABLE reconcile_seen (
    run_id  uuid NOT NULL,
    kind    text NOT NULL,
    key     text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, kind, key)
);
