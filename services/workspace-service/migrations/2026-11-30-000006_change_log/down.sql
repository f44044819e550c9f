DROP TABLE change_log;
DROP TABLE change_heads;
