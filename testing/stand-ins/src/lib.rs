//! In-process stand-ins for third-party HTTP APIs that cannot be reached from here.
//!
//! Each binds `127.0.0.1:0` (or a given address), answers as the real API does (status codes,
//! bodies), and can be told to fail or slow down. Used by tests and by the local development stack.

mod clerk;
mod clerk_api;
pub mod http_server;
mod jwks;
mod liveblocks;
mod liveblocks_authorize;
mod liveblocks_identify;

pub use clerk::{ClerkStandIn, OrgClaim, ServiceKeys};
pub use clerk_api::{
    Call, ClerkApiStandIn, DEFAULT_INSTANCE, EmptyList, membership_json, org_json, user_json,
};
pub use http_server::HttpStandIn;
pub use jwks::JwksServer;
pub use liveblocks::{LiveblocksMode, LiveblocksStandIn};
pub use liveblocks_authorize::Authorization;
pub use liveblocks_identify::Identification;
