-- The change-log entries that still carry a message's body (posted, edited), by message: an
-- edit or a delete of the message clears the body from them in its own transaction and sets
-- `message_id` back to NULL, so no resume replays deleted or pre-edit text. The partial index
-- holds only the entries not yet cleared.
ALTER TABLE change_log ADD COLUMN message_id uuid;
CREATE INDEX change_log_message_idx ON change_log (message_id) WHERE message_id IS NOT NULL;
