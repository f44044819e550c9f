//! The gateway end to end: signed webhooks over HTTP and reconcile runs against a stand-in of
//! Clerk's Backend API, into the real identity and workspace services on real Postgres.

mod failing;
mod ordering;
mod quarantine;
mod reconcile;
mod reconcile_deleted_here;
mod reconcile_edges;
mod reconcile_guards;
mod reconcile_late_webhooks;
mod reconcile_retry;
mod roles;
mod support;
mod webhooks;
