//! Live updates: the [`hub`] on each replica listens for `vbase_changes` notifications and
//! reads the change log once per workspace for all of that replica's watchers; a [`watch`]
//! stream delivers one caller's backlog after its resume token, then the hub's changes.

pub mod hub;
pub mod watch;

use std::time::Duration;

/// How the watches run.
#[derive(Debug, Clone, Copy)]
pub struct LiveSettings {
    /// Events queued per stream for a client that reads slowly; beyond, the stream ends.
    pub buffer: usize,
    /// Streams one replica serves at most.
    pub max_streams: usize,
    /// How long the change log keeps changes (a resume token older than that is refused).
    pub retention: Duration,
    /// How often a stream re-checks its caller's access.
    pub recheck: Duration,
}
