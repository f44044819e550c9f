//! Bearer-token authentication for the VBase gRPC services.
//!
//! Two kinds of caller present `Authorization: Bearer <JWT>`:
//! - **users**, with Clerk session or JWT-template tokens (RS256, keys from Clerk's JWKS);
//! - **internal services**, with short-lived tokens signed by our own key (Ed25519 or RS256,
//!   keys from a JWKS file or URL), whose `aud` names the receiving service.
//!
//! [`Authenticator`] verifies a token into a [`Principal`]. [`AuthLayer`] applies it to every gRPC
//! call of a tonic server with a per-method [`MethodPolicy`], synchronously, and puts the verified
//! [`Principal`] into the request extensions; health and reflection stay open. Keys live in a
//! [`KeyStore`] that a background task refreshes, with a throttled re-fetch on unknown `kid`s.
//! [`signing`] mints tokens (the gateway's service tokens, and development/test user tokens).

mod callers;
mod claims;
mod config;
mod error;
mod keys;
mod policy;
pub mod signing;
mod verify;

pub use callers::{GATEWAY_SUBJECT, ServiceCallers};
pub use claims::{ActiveOrg, Principal, ServicePrincipal, UserPrincipal, normalize_role};
pub use config::AuthArgs;
pub use error::AuthError;
pub use keys::{
    KeySource, KeyStore, KeyStoreOptions, MAX_JWKS_BYTES, SUBJECTS_MEMBER, acceptable_jwks_url,
    valid_subject,
};
pub use policy::{Access, AuthLayer, AuthService, MethodPolicy};
pub use verify::{Authenticator, ClerkSettings, ServiceSettings};
