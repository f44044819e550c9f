DROP TABLE processed_events, liveblocks_cleanup_jobs, meetings, whiteboards, code_files, documents,
    rooms, read_receipts, messages, channels, removed_users, memberships, workspace_tombstones, workspaces;
