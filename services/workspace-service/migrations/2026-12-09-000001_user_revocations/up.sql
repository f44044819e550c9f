-- When Clerk last revoked all of a user's sessions (a ban): every token issued before it is
-- refused (domain/standing.rs). A row stays after an unban: tokens issued later pass anyway.
CREATE TABLE user_revocations (
    clerk_user_id text PRIMARY KEY,
    revoked_at timestamptz NOT NULL
);

-- `notify_access` as before, with `user_revocations` notifying `u <user>` like `removed_users`.
CREATE OR REPLACE FUNCTION notify_access() RETURNS trigger LANGUAGE plpgsql AS $$
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
    ELSIF TG_TABLE_NAME IN ('removed_users', 'user_revocations') THEN
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

CREATE TRIGGER access_rows AFTER INSERT OR UPDATE OR DELETE ON user_revocations
    FOR EACH ROW EXECUTE FUNCTION notify_access();
CREATE TRIGGER access_truncate AFTER TRUNCATE ON user_revocations
    FOR EACH STATEMENT EXECUTE FUNCTION notify_access();
