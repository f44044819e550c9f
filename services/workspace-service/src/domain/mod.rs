//! What workspace-service does, one module per resource. Every function takes the caller's
//! connection (`&mut AsyncPgConnection`, a pooled connection or an open transaction), so
//! several steps can share one transaction; the handlers own the connection.
//!
//! Functions that act for a caller check access themselves: the workspace is only known after
//! a lookup. Lists use keyset pages on `(time, id)`, stable under concurrent inserts.

pub mod access;
pub mod changes;
pub mod channels;
pub mod events;
pub mod items;
pub mod listings;
pub mod liveblocks;
pub mod meetings;
pub mod memberships;
pub mod messages;
pub mod purge;
pub mod receipts;
pub mod reconcile;
pub mod requests;
pub mod revocations;
pub mod roles;
pub mod room_access;
pub mod rooms;
pub mod standing;
pub mod users;
pub mod workspaces;

#[cfg(test)]
mod wire_size_tests;

/// What a sync command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written.
    Applied,
    /// This event id was applied before.
    Duplicate,
    /// Newer state or a tombstone is stored.
    Stale,
}

impl Outcome {
    /// The label of `workspace_commands{outcome}`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
        }
    }
}

/// Longest room, item or meeting name.
pub const MAX_NAME: usize = 120;
