-- Every change to what decides a caller's access (memberships, removed users, workspaces)
-- notifies `vbase_access` with the key it touches, in the writing transaction: the replicas'
-- access caches forget those keys when it commits (crates/coherent-cache).
--   m <org> <user>   a membership
--   u <user>         a removed user
--   w <org>          a workspace
--   *                everything (TRUNCATE)

CREATE FUNCTION notify_access() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    keys text[] := '{}';
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('vbase_access', '*');
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'memberships' THEN
        IF TG_OP <> 'INSERT' THEN keys := keys || ('m ' || OLD.clerk_org_id || ' ' || OLD.clerk_user_id); END IF;
        IF TG_OP <> 'DELETE' THEN keys := keys || ('m ' || NEW.clerk_org_id || ' ' || NEW.clerk_user_id); END IF;
    ELSIF TG_TABLE_NAME = 'removed_users' THEN
        IF TG_OP <> 'INSERT' THEN keys := keys || ('u ' || OLD.clerk_user_id); END IF;
        IF TG_OP <> 'DELETE' THEN keys := keys || ('u ' || NEW.clerk_user_id); END IF;
    ELSE
        IF TG_OP <> 'INSERT' THEN keys := keys || ('w ' || OLD.clerk_org_id); END IF;
        IF TG_OP <> 'DELETE' THEN keys := keys || ('w ' || NEW.clerk_org_id); END IF;
    END IF;
    -- PostgreSQL sends one of identical notifications of a transaction.
    PERFORM pg_notify('vbase_access', k) FROM unnest(keys) k;
    RETURN NULL;
END $$;

CREATE TRIGGER access_rows AFTER INSERT OR DELETE ON memberships
    FOR EACH ROW EXECUTE FUNCTION notify_access();
-- Only columns an access check reads (reconcile also writes Clerk's ids and times).
CREATE TRIGGER access_update AFTER UPDATE ON memberships FOR EACH ROW
    WHEN ((OLD.clerk_org_id, OLD.clerk_user_id, OLD.role, OLD.deleted, OLD.deleted_at, OLD.source_updated_at)
          IS DISTINCT FROM (NEW.clerk_org_id, NEW.clerk_user_id, NEW.role, NEW.deleted, NEW.deleted_at, NEW.source_updated_at))
    EXECUTE FUNCTION notify_access();
CREATE TRIGGER access_truncate AFTER TRUNCATE ON memberships
    FOR EACH STATEMENT EXECUTE FUNCTION notify_access();

CREATE TRIGGER access_rows AFTER INSERT OR UPDATE OR DELETE ON removed_users
    FOR EACH ROW EXECUTE FUNCTION notify_access();
CREATE TRIGGER access_truncate AFTER TRUNCATE ON removed_users
    FOR EACH STATEMENT EXECUTE FUNCTION notify_access();

CREATE TRIGGER access_rows AFTER INSERT OR DELETE ON workspaces
    FOR EACH ROW EXECUTE FUNCTION notify_access();
-- The columns a cached workspace holds.
CREATE TRIGGER access_update AFTER UPDATE ON workspaces FOR EACH ROW
    WHEN ((OLD.id, OLD.clerk_org_id, OLD.name, OLD.slug, OLD.owner_clerk_id, OLD.source_updated_at,
           OLD.created_at, OLD.updated_at, OLD.deleted_at)
          IS DISTINCT FROM (NEW.id, NEW.clerk_org_id, NEW.name, NEW.slug, NEW.owner_clerk_id,
           NEW.source_updated_at, NEW.created_at, NEW.updated_at, NEW.deleted_at))
    EXECUTE FUNCTION notify_access();
CREATE TRIGGER access_truncate AFTER TRUNCATE ON workspaces
    FOR EACH STATEMENT EXECUTE FUNCTION notify_access();
