-- Validation takes only a SHARE UPDATE EXCLUSIVE lock: reads and writes go on while it scans.
ALTER TABLE messages VALIDATE CONSTRAINT messages_channel_id_fkey;
ALTER TABLE read_receipts VALIDATE CONSTRAINT read_receipts_channel_id_fkey;
