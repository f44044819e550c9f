//! Integration tests of identity-service, in one binary: each test starts the real server on
//! 127.0.0.1:0 against its own PostgreSQL database (one link instead of one per file).

mod bans;
mod batching;
mod bounds;
mod browser;
mod deleted;
mod identity;
mod lifecycle;
mod migrations;
mod properties;
mod quotas;
mod reconcile;
mod replica_reads;
mod support;
mod user_cache;
mod user_calls;
