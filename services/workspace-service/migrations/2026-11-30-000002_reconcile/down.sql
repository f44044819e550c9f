DROP TABLE reconcile_seen;
ALTER TABLE memberships
    DROP COLUMN recorded_at, DROP COLUMN deleted_at, DROP COLUMN source_event_id,
    DROP COLUMN source_event_time, DROP COLUMN membership_created_at, DROP COLUMN clerk_membership_id;
ALTER TABLE workspaces DROP COLUMN source_event_id, DROP COLUMN source_event_time;
