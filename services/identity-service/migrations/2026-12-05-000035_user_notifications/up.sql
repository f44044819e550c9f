-- Every change to a user row notifies `vbase_users` with `u <clerk_id>` in the writing
-- transaction (`*` on TRUNCATE): the replicas' user caches forget it when it commits
-- (crates/coherent-cache).

CREATE FUNCTION notify_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('vbase_users', '*');
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('vbase_users', 'u ' || NEW.clerk_id);
    ELSE
        PERFORM pg_notify('vbase_users', 'u ' || OLD.clerk_id);
        IF TG_OP = 'UPDATE' AND NEW.clerk_id <> OLD.clerk_id THEN
            PERFORM pg_notify('vbase_users', 'u ' || NEW.clerk_id);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER cached_rows AFTER INSERT OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION notify_user();
CREATE TRIGGER cached_update AFTER UPDATE ON users FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION notify_user();
CREATE TRIGGER cached_truncate AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION notify_user();
