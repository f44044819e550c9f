DROP TRIGGER access_rows ON memberships;
DROP TRIGGER access_update ON memberships;
DROP TRIGGER access_truncate ON memberships;
DROP TRIGGER access_rows ON removed_users;
DROP TRIGGER access_truncate ON removed_users;
DROP TRIGGER access_rows ON workspaces;
DROP TRIGGER access_update ON workspaces;
DROP TRIGGER access_truncate ON workspaces;
DROP FUNCTION notify_access();
