//! Integration tests of workspace-service, in one binary: each test starts the real server on
//! 127.0.0.1:0 against its own PostgreSQL database (one link instead of one per file).

mod access_cache;
mod change_log;
mod channel_cache;
mod content;
mod create_retries;
mod custom_roles;
mod deadlines;
mod deletion;
mod input_rules;
mod keys;
mod migrations;
mod operations;
mod permissions;
mod postgres_crash;
mod purge_scale;
mod quotas;
mod races;
mod reconcile;
mod replica_reads;
mod room_access;
mod room_token_bounds;
mod session_tokens;
mod support;
mod sync;
mod watch;
mod watch_bounds;
