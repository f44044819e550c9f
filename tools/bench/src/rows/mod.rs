//! One module per row of the table (`--rows`), each with its baseline.

pub mod delete;
pub mod fanout;
pub mod ingest;
pub mod liveblocks;
pub mod message_reads;
pub mod messages;
pub mod reads;
pub mod reconcile;
pub mod room_token;
pub mod token;
pub mod workspace_read;
