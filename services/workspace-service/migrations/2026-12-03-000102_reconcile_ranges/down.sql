DROP TABLE reconcile_candidates;
DROP INDEX memberships_unplaced_idx;
DROP INDEX workspaces_unplaced_idx;
DROP INDEX memberships_created_idx;
DROP INDEX workspaces_clerk_created_idx;
ALTER TABLE workspaces DROP COLUMN clerk_created_at;
