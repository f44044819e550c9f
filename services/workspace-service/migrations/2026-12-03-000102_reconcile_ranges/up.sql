-- Reconcile walks workspaces and memberships as it walks users: in the order Clerk lists them
-- (`created_at`, then id), comparing each page with what is held in the stretch of that order
-- the page covers, so a run costs what a page costs whatever the number of rows held.

-- Clerk's `created_at` of the organization ('-infinity' until a webhook or a run says it).
ALTER TABLE workspaces ADD COLUMN clerk_created_at timestamptz NOT NULL DEFAULT '-infinity';
CREATE INDEX workspaces_clerk_created_idx ON workspaces (clerk_created_at, clerk_org_id)
    WHERE deleted_at IS NULL;
CREATE INDEX memberships_created_idx ON memberships (membership_created_at, clerk_membership_id)
    WHERE NOT deleted;
-- The rows still without a place, which a page that lists them places: small (empty once a run
-- placed them), so a page over data in step does not look up its rows a second time.
CREATE INDEX workspaces_unplaced_idx ON workspaces (clerk_org_id)
    WHERE clerk_created_at = '-infinity' AND deleted_at IS NULL;
CREATE INDEX memberships_unplaced_idx ON memberships (clerk_org_id, clerk_user_id)
    WHERE clerk_membership_id = '' AND NOT deleted;

-- What a run found held in a page's stretch that the page did not list: its deletion
-- candidates (`workspace`: the organization; `membership`: organization, user and the
-- membership id held then), each confirmed with Clerk before anything is deleted. As many rows
-- as the data differs. Removed when the run finishes (or two days later). `reconcile_seen` is
-- no longer written (kept for one release, for the previous version's pods).
CREATE TABLE reconcile_candidates (
    run_id              uuid NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('workspace', 'membership')),
    clerk_org_id        text NOT NULL,
    clerk_user_id       text NOT NULL DEFAULT '',
    clerk_membership_id text NOT NULL DEFAULT '',
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, kind, clerk_org_id, clerk_user_id)
);
