//! Integration tests of workspace-service, in one binary: each test starts the real server on
//! 127.0.0.1:0 against its own PostgreSQL database (one link instead of one per file).

mod cascade;
mod cascade_scale;
mod content;
mod migrations;
mod support;
mod sync;
