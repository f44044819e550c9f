-- Deleting a channel deletes its messages and read receipts in the same pass.
-- Before, the service deleted the messages first and the channel after, and the NO ACTION
-- foreign-key check on the channel then walked every message it had just deleted a second time,
-- through the index (a third of the time of a large workspace delete).
-- The old constraint guarantees every existing row, so the new one is added NOT VALID: no table
-- scan while this migration holds its lock. The next migration validates it.
ALTER TABLE messages
    DROP CONSTRAINT messages_channel_id_fkey,
    ADD CONSTRAINT messages_channel_id_fkey FOREIGN KEY (channel_id)
        REFERENCES channels (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE read_receipts
    DROP CONSTRAINT read_receipts_channel_id_fkey,
    ADD CONSTRAINT read_receipts_channel_id_fkey FOREIGN KEY (channel_id)
        REFERENCES channels (id) ON DELETE CASCADE NOT VALID;
