//! The service's vocabulary: typed ids, the kinds of rooms and items, roles, lock keys and
//! page tokens. Everything here is checked once, where it enters, and trusted afterwards.

pub mod ids;
pub mod kinds;
pub mod paging;

pub use ids::{EventId, LockKey, OrgId, Role, UserId};
pub use kinds::{ItemKind, RoomKind};
pub use paging::{Cursor, Page};
