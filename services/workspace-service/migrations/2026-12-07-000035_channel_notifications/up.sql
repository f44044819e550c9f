-- Every change to a workspace's channels notifies `vbase_channels` with the workspace's id, in
-- the writing transaction: the replicas' channel caches forget that workspace's list when it
-- commits (crates/coherent-cache). `*` (TRUNCATE) forgets every list.

CREATE FUNCTION notify_channels() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('vbase_channels', '*');
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN PERFORM pg_notify('vbase_channels', OLD.workspace_id::text); END IF;
    -- PostgreSQL sends one of identical notifications of a transaction.
    IF TG_OP <> 'DELETE' THEN PERFORM pg_notify('vbase_channels', NEW.workspace_id::text); END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER channel_rows AFTER INSERT OR UPDATE OR DELETE ON channels
    FOR EACH ROW EXECUTE FUNCTION notify_channels();
CREATE TRIGGER channel_truncate AFTER TRUNCATE ON channels
    FOR EACH STATEMENT EXECUTE FUNCTION notify_channels();
