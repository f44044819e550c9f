DROP INDEX change_log_message_idx;
ALTER TABLE change_log DROP COLUMN message_id;
