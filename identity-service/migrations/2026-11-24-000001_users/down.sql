DROP TABLE processed_events;
DROP TABLE user_tombstones;
DROP TABLE users;
