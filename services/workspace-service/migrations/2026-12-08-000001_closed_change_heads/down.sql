ALTER TABLE change_heads DROP COLUMN closed;
