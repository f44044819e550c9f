//! webhook-gateway: Clerk webhooks in, verified and typed; gRPC commands out.
//!
//! `POST /clerk` reads at most 1 MiB, verifies the Svix signature on the raw bytes, parses the
//! Clerk event into typed structs and forwards one typed command per event, answering 2xx only
//! after the service committed it. Duplicates answer 2xx with no second effect (the services
//! de-duplicate on `svix-id`); unhandled event types answer 2xx and are counted; a signed
//! delivery that cannot be applied (unparseable, or refused by a service) is kept in the owning
//! service's quarantine and answered 2xx (see [`quarantine`]); a slow or unavailable service
//! answers 503 within the deadline so Svix retries later; a delivery a service fails for a
//! reason of its own answers 503 too, until its event is old enough that Svix is about to give
//! up: then it is quarantined (see [`failed`]).
//!
//! Modules: [`config`] (settings), [`server`] (accept loop and routes), [`webhook`] (the
//! `POST /clerk` handler), [`body_budget`] (bytes of bodies held at once), [`verify`],
//! [`clerk`], [`forward`], [`failed`], [`quarantine`], [`reconcile`].

pub mod body_budget;
pub mod clerk;
pub mod clerk_api;
pub mod config;
pub mod failed;
pub mod forward;
pub mod log_budget;
pub mod metrics;
pub mod quarantine;
pub mod reconcile;
pub mod server;
pub mod verify;
pub mod webhook;

pub use config::{Config, DownstreamArgs, SERVICE_TOKEN_TTL};
pub use server::run;
pub use webhook::MAX_BODY;
