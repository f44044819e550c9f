//! Live updates: the [`hub`] on each replica listens for `vbase_changes` notifications and
//! reads the change log once per workspace for all of that replica's watchers, encoding each
//! change once ([`frames`]); a [`watch`] stream delivers one caller's backlog after its resume
//! token, then the hub's changes, through its byte-counted [`outbox`]. The change log is
//! pruned by its own worker ([`prune`]).

pub mod frames;
pub mod hub;
pub mod outbox;
pub mod prune;
pub mod watch;

use std::time::Duration;

/// How the watches run.
#[derive(Debug, Clone, Copy)]
pub struct LiveSettings {
    /// Bytes of events queued per stream for a client that reads slowly; beyond, the stream
    /// ends.
    pub stream_bytes: usize,
    /// Bytes the replica's live events may hold before streams that are behind are ended.
    pub total_bytes: usize,
    /// Streams one replica serves at most.
    pub max_streams: usize,
    /// Streams one user may have open on one replica.
    pub per_user: usize,
    /// How long the change log keeps changes (a resume token older than that is refused).
    pub retention: Duration,
    /// How often a stream re-checks its caller's access.
    pub recheck: Duration,
}
