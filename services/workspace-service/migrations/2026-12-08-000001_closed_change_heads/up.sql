-- A workspace's deletion closes its log: `closed` is set by the deletion's entry, and a closed
-- head numbers no further change, so the deletion stays the log's last entry (which the purge
-- keeps and watchers read last). A write whose access check passed as the deletion committed
-- finds the head closed when it takes its number, and records nothing.
ALTER TABLE change_heads ADD COLUMN closed boolean NOT NULL DEFAULT false;
-- Heads of workspaces deleted before this migration (hidden, being purged, or gone).
UPDATE change_heads h SET closed = true
 WHERE NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = h.workspace_id AND w.deleted_at IS NULL);
