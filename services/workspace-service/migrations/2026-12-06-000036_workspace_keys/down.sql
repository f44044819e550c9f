DROP TRIGGER membership_workspace ON workspaces;
DROP TRIGGER membership_workspace ON memberships;
DROP FUNCTION check_membership_workspace();

DROP INDEX memberships_org_user_idx;
ALTER TABLE memberships DROP CONSTRAINT memberships_pkey, ADD PRIMARY KEY (clerk_org_id, clerk_user_id);
ALTER TABLE memberships DROP COLUMN workspace_id;

DROP INDEX channels_id_idx;
DROP INDEX rooms_id_idx;
DROP INDEX messages_id_idx;
DROP INDEX documents_id_idx;
DROP INDEX code_files_id_idx;
DROP INDEX whiteboards_id_idx;
DROP INDEX meetings_id_idx;

DROP INDEX messages_channel_idx;
CREATE INDEX messages_channel_idx ON messages (channel_id, created_at DESC, id DESC);
DROP INDEX documents_room_idx;
CREATE INDEX documents_room_idx ON documents (room_id, created_at, id);
DROP INDEX code_files_room_idx;
CREATE INDEX code_files_room_idx ON code_files (room_id, created_at, id);
DROP INDEX whiteboards_room_idx;
CREATE INDEX whiteboards_room_idx ON whiteboards (room_id, created_at, id);
DROP INDEX meetings_room_idx;
CREATE INDEX meetings_room_idx ON meetings (room_id, starts_at, id);

ALTER TABLE messages DROP CONSTRAINT messages_channel_fkey;
ALTER TABLE read_receipts DROP CONSTRAINT read_receipts_channel_fkey;
ALTER TABLE documents DROP CONSTRAINT documents_room_fkey;
ALTER TABLE code_files DROP CONSTRAINT code_files_room_fkey;
ALTER TABLE whiteboards DROP CONSTRAINT whiteboards_room_fkey;
ALTER TABLE meetings DROP CONSTRAINT meetings_room_fkey;

ALTER TABLE channels DROP CONSTRAINT channels_pkey, ADD PRIMARY KEY (id);
ALTER TABLE rooms DROP CONSTRAINT rooms_pkey, ADD PRIMARY KEY (id);
ALTER TABLE messages DROP CONSTRAINT messages_pkey, ADD PRIMARY KEY (id);
ALTER TABLE read_receipts DROP CONSTRAINT read_receipts_pkey, ADD PRIMARY KEY (channel_id, clerk_user_id);
ALTER TABLE documents DROP CONSTRAINT documents_pkey, ADD PRIMARY KEY (id);
ALTER TABLE code_files DROP CONSTRAINT code_files_pkey, ADD PRIMARY KEY (id);
ALTER TABLE whiteboards DROP CONSTRAINT whiteboards_pkey, ADD PRIMARY KEY (id);
ALTER TABLE meetings DROP CONSTRAINT meetings_pkey, ADD PRIMARY KEY (id);

ALTER TABLE messages ADD CONSTRAINT messages_channel_id_fkey FOREIGN KEY (channel_id)
    REFERENCES channels (id) ON DELETE CASCADE;
ALTER TABLE read_receipts ADD CONSTRAINT read_receipts_channel_id_fkey FOREIGN KEY (channel_id)
    REFERENCES channels (id) ON DELETE CASCADE;
ALTER TABLE documents ADD CONSTRAINT documents_room_id_fkey FOREIGN KEY (room_id) REFERENCES rooms (id);
ALTER TABLE code_files ADD CONSTRAINT code_files_room_id_fkey FOREIGN KEY (room_id) REFERENCES rooms (id);
ALTER TABLE whiteboards ADD CONSTRAINT whiteboards_room_id_fkey FOREIGN KEY (room_id) REFERENCES rooms (id);
ALTER TABLE meetings ADD CONSTRAINT meetings_room_id_fkey FOREIGN KEY (room_id) REFERENCES rooms (id);

ALTER TABLE messages DROP COLUMN workspace_id;
ALTER TABLE read_receipts DROP COLUMN workspace_id;
ALTER TABLE documents DROP COLUMN workspace_id;
ALTER TABLE code_files DROP COLUMN workspace_id;
ALTER TABLE whiteboards DROP COLUMN workspace_id;
ALTER TABLE meetings DROP COLUMN workspace_id;
