ALTER TABLE messages
    DROP CONSTRAINT messages_channel_id_fkey,
    ADD CONSTRAINT messages_channel_id_fkey FOREIGN KEY (channel_id) REFERENCES channels (id);
ALTER TABLE read_receipts
    DROP CONSTRAINT read_receipts_channel_id_fkey,
    ADD CONSTRAINT read_receipts_channel_id_fkey FOREIGN KEY (channel_id) REFERENCES channels (id);
