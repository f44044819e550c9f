DROP TRIGGER channel_rows ON channels;
DROP TRIGGER channel_truncate ON channels;
DROP FUNCTION notify_channels();
