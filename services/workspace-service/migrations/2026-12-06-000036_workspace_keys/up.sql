-- Every content table holds its workspace's id, first in its primary key, and every foreign
-- key between content tables includes it, so each table can be partitioned by workspace
-- (`PARTITION BY HASH (workspace_id)`, or distributed by it with Citus) as it stands, and
-- every statement of the services names the workspace of the rows it reads or writes.

-- It rewrites the content tables: no limit of the role's applies (the services' upgrade stops
-- workspace-service meanwhile, deploy/README.md).
SET LOCAL statement_timeout = 0;
SET LOCAL lock_timeout = 0;

-- 1. The column, filled from the parent row (a message or read receipt from its channel, an
--    item or meeting from its room), then required.
ALTER TABLE messages ADD COLUMN workspace_id uuid;
ALTER TABLE read_receipts ADD COLUMN workspace_id uuid;
ALTER TABLE documents ADD COLUMN workspace_id uuid;
ALTER TABLE code_files ADD COLUMN workspace_id uuid;
ALTER TABLE whiteboards ADD COLUMN workspace_id uuid;
ALTER TABLE meetings ADD COLUMN workspace_id uuid;

UPDATE messages m SET workspace_id = c.workspace_id FROM channels c WHERE c.id = m.channel_id;
UPDATE read_receipts r SET workspace_id = c.workspace_id FROM channels c WHERE c.id = r.channel_id;
UPDATE documents i SET workspace_id = r.workspace_id FROM rooms r WHERE r.id = i.room_id;
UPDATE code_files i SET workspace_id = r.workspace_id FROM rooms r WHERE r.id = i.room_id;
UPDATE whiteboards i SET workspace_id = r.workspace_id FROM rooms r WHERE r.id = i.room_id;
UPDATE meetings m SET workspace_id = r.workspace_id FROM rooms r WHERE r.id = m.room_id;

ALTER TABLE messages ALTER COLUMN workspace_id SET NOT NULL;
ALTER TABLE read_receipts ALTER COLUMN workspace_id SET NOT NULL;
ALTER TABLE documents ALTER COLUMN workspace_id SET NOT NULL;
ALTER TABLE code_files ALTER COLUMN workspace_id SET NOT NULL;
ALTER TABLE whiteboards ALTER COLUMN workspace_id SET NOT NULL;
ALTER TABLE meetings ALTER COLUMN workspace_id SET NOT NULL;

-- 2. The keys. The foreign keys on the parents' `id` go first (they hang on the parents'
--    primary keys); the new ones reference the parents' new keys.
ALTER TABLE messages DROP CONSTRAINT messages_channel_id_fkey;
ALTER TABLE read_receipts DROP CONSTRAINT read_receipts_channel_id_fkey;
ALTER TABLE documents DROP CONSTRAINT documents_room_id_fkey;
ALTER TABLE code_files DROP CONSTRAINT code_files_room_id_fkey;
ALTER TABLE whiteboards DROP CONSTRAINT whiteboards_room_id_fkey;
ALTER TABLE meetings DROP CONSTRAINT meetings_room_id_fkey;

ALTER TABLE channels DROP CONSTRAINT channels_pkey, ADD PRIMARY KEY (workspace_id, id);
ALTER TABLE rooms DROP CONSTRAINT rooms_pkey, ADD PRIMARY KEY (workspace_id, id);
ALTER TABLE messages DROP CONSTRAINT messages_pkey, ADD PRIMARY KEY (workspace_id, id);
ALTER TABLE read_receipts DROP CONSTRAINT read_receipts_pkey,
    ADD PRIMARY KEY (workspace_id, channel_id, clerk_user_id);
ALTER TABLE documents DROP CONSTRAINT documents_pkey, ADD PRIMARY KEY (workspace_id, id);
ALTER TABLE code_files DROP CONSTRAINT code_files_pkey, ADD PRIMARY KEY (workspace_id, id);
ALTER TABLE whiteboards DROP CONSTRAINT whiteboards_pkey, ADD PRIMARY KEY (workspace_id, id);
ALTER TABLE meetings DROP CONSTRAINT meetings_pkey, ADD PRIMARY KEY (workspace_id, id);

-- Deleting a channel deletes its messages and read receipts in the same pass.
ALTER TABLE messages ADD CONSTRAINT messages_channel_fkey FOREIGN KEY (workspace_id, channel_id)
    REFERENCES channels (workspace_id, id) ON DELETE CASCADE;
ALTER TABLE read_receipts ADD CONSTRAINT read_receipts_channel_fkey
    FOREIGN KEY (workspace_id, channel_id) REFERENCES channels (workspace_id, id) ON DELETE CASCADE;
ALTER TABLE documents ADD CONSTRAINT documents_room_fkey FOREIGN KEY (workspace_id, room_id)
    REFERENCES rooms (workspace_id, id);
ALTER TABLE code_files ADD CONSTRAINT code_files_room_fkey FOREIGN KEY (workspace_id, room_id)
    REFERENCES rooms (workspace_id, id);
ALTER TABLE whiteboards ADD CONSTRAINT whiteboards_room_fkey FOREIGN KEY (workspace_id, room_id)
    REFERENCES rooms (workspace_id, id);
ALTER TABLE meetings ADD CONSTRAINT meetings_room_fkey FOREIGN KEY (workspace_id, room_id)
    REFERENCES rooms (workspace_id, id);

-- 3. The indexes: the children's pages (and their foreign keys) by workspace and parent.
DROP INDEX messages_channel_idx;
CREATE INDEX messages_channel_idx ON messages (workspace_id, channel_id, created_at, id);
DROP INDEX documents_room_idx;
CREATE INDEX documents_room_idx ON documents (workspace_id, room_id, created_at, id);
DROP INDEX code_files_room_idx;
CREATE INDEX code_files_room_idx ON code_files (workspace_id, room_id, created_at, id);
DROP INDEX whiteboards_room_idx;
CREATE INDEX whiteboards_room_idx ON whiteboards (workspace_id, room_id, created_at, id);
DROP INDEX meetings_room_idx;
CREATE INDEX meetings_room_idx ON meetings (workspace_id, room_id, starts_at, id);

-- Internal callers (service tokens) name a channel, room, message, item or meeting without its
-- organization: they find it by id alone, through these (on a partitioned table, one probe
-- per partition). Users' calls name the workspace (their token's organization).
CREATE INDEX channels_id_idx ON channels (id);
CREATE INDEX rooms_id_idx ON rooms (id);
CREATE INDEX messages_id_idx ON messages (id);
CREATE INDEX documents_id_idx ON documents (id);
CREATE INDEX code_files_id_idx ON code_files (id);
CREATE INDEX whiteboards_id_idx ON whiteboards (id);
CREATE INDEX meetings_id_idx ON meetings (id);

-- 4. Memberships, which may arrive before their organization: a workspace created for an
--    organization gets the UUIDv5 of its `clerk_org_id` (namespace
--    8c3b5a64-2f1e-4d7a-9b0c-5e6f7a8b9c0d, `WORKSPACE_ID_NAMESPACE` in the service) as its id,
--    so a membership holds its workspace's id before the workspace exists. The workspace id of
--    an organization is its workspace row's id if it has one (workspaces created before keep
--    theirs), else that derived id.
--    The UUIDv5 is computed here with plain functions (no extension: the schema's owner
--    migrates, and may not create one).
-- SHA-1 (FIPS 180-4) of `m`.
CREATE FUNCTION pg_temp.sha1(m bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    mask constant bigint := 4294967295;
    bits constant bigint := octet_length(m)::bigint * 8;
    h bigint[] := ARRAY[1732584193, 4023233417, 2562383102, 271733878, 3285377520];
    w bigint[];
    a bigint; b bigint; c bigint; d bigint; e bigint; f bigint; k bigint; t bigint;
    o int;
    out bytea := '\x';
BEGIN
    m := m || '\x80'::bytea;
    WHILE octet_length(m) % 64 <> 56 LOOP
        m := m || '\x00'::bytea;
    END LOOP;
    m := m || int8send(bits);
    FOR chunk IN 0 .. octet_length(m) / 64 - 1 LOOP
        w := '{}';
        FOR i IN 0 .. 15 LOOP
            o := chunk * 64 + i * 4;
            w[i] := (get_byte(m, o)::bigint << 24) | (get_byte(m, o + 1)::bigint << 16)
                  | (get_byte(m, o + 2)::bigint << 8) | get_byte(m, o + 3)::bigint;
        END LOOP;
        FOR i IN 16 .. 79 LOOP
            t := w[i - 3] # w[i - 8] # w[i - 14] # w[i - 16];
            w[i] := ((t << 1) | (t >> 31)) & mask;
        END LOOP;
        a := h[1]; b := h[2]; c := h[3]; d := h[4]; e := h[5];
        FOR i IN 0 .. 79 LOOP
            IF i < 20 THEN
                f := (b & c) | ((~b & mask) & d); k := 1518500249;
            ELSIF i < 40 THEN
                f := b # c # d; k := 1859775393;
            ELSIF i < 60 THEN
                f := (b & c) | (b & d) | (c & d); k := 2400959708;
            ELSE
                f := b # c # d; k := 3395469782;
            END IF;
            t := ((((a << 5) | (a >> 27)) & mask) + f + e + k + w[i]) & mask;
            e := d; d := c; c := ((b << 30) | (b >> 2)) & mask; b := a; a := t;
        END LOOP;
        h[1] := (h[1] + a) & mask;
        h[2] := (h[2] + b) & mask;
        h[3] := (h[3] + c) & mask;
        h[4] := (h[4] + d) & mask;
        h[5] := (h[5] + e) & mask;
    END LOOP;
    FOR i IN 1 .. 5 LOOP
        out := out || substring(int8send(h[i]) FROM 5 FOR 4);
    END LOOP;
    RETURN out;
END $$;

-- The UUIDv5 (RFC 9562) of `name` in namespace `ns`.
CREATE FUNCTION pg_temp.uuid_v5(ns uuid, name text) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    hash bytea := pg_temp.sha1(uuid_send(ns) || convert_to(name, 'UTF8'));
BEGIN
    hash := set_byte(hash, 6, (get_byte(hash, 6) & 15) | 80);
    hash := set_byte(hash, 8, (get_byte(hash, 8) & 63) | 128);
    RETURN encode(substring(hash FROM 1 FOR 16), 'hex')::uuid;
END $$;

ALTER TABLE memberships ADD COLUMN workspace_id uuid;
UPDATE memberships m
   SET workspace_id = COALESCE(
           (SELECT w.id FROM workspaces w WHERE w.clerk_org_id = m.clerk_org_id),
           pg_temp.uuid_v5('8c3b5a64-2f1e-4d7a-9b0c-5e6f7a8b9c0d', m.clerk_org_id));
DROP FUNCTION pg_temp.uuid_v5(uuid, text);
DROP FUNCTION pg_temp.sha1(bytea);
ALTER TABLE memberships ALTER COLUMN workspace_id SET NOT NULL;
ALTER TABLE memberships DROP CONSTRAINT memberships_pkey, ADD PRIMARY KEY (workspace_id, clerk_user_id);
-- Reconcile compares Clerk's listing, which names organizations, across workspaces.
CREATE INDEX memberships_org_user_idx ON memberships (clerk_org_id, clerk_user_id);

-- 3. An organization's memberships and its workspace hold one workspace id. The services keep
--    it (the id rule, under the organization's lock); a row that breaks it (a restored
--    workspace, a hand-made one) is refused, not split off where the access check and the
--    purge would no longer find it.
CREATE FUNCTION check_membership_workspace() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'memberships' THEN
        IF EXISTS (SELECT FROM workspaces w
                    WHERE w.clerk_org_id = NEW.clerk_org_id AND w.id <> NEW.workspace_id) THEN
            RAISE EXCEPTION 'membership of % names workspace %, not its organization''s',
                NEW.clerk_org_id, NEW.workspace_id USING ERRCODE = 'check_violation';
        END IF;
    ELSIF EXISTS (SELECT FROM memberships m
                   WHERE m.clerk_org_id = NEW.clerk_org_id AND m.workspace_id <> NEW.id) THEN
        RAISE EXCEPTION 'workspace % of % is not the workspace its memberships name',
            NEW.id, NEW.clerk_org_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER membership_workspace BEFORE INSERT OR UPDATE OF clerk_org_id, workspace_id
    ON memberships FOR EACH ROW EXECUTE FUNCTION check_membership_workspace();
CREATE TRIGGER membership_workspace BEFORE INSERT OR UPDATE OF id, clerk_org_id
    ON workspaces FOR EACH ROW EXECUTE FUNCTION check_membership_workspace();

ANALYZE channels, rooms, messages, read_receipts, documents, code_files, whiteboards, meetings,
    memberships;
