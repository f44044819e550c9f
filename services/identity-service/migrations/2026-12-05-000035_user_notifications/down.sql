DROP TRIGGER cached_rows ON users;
DROP TRIGGER cached_update ON users;
DROP TRIGGER cached_truncate ON users;
DROP FUNCTION notify_user();
