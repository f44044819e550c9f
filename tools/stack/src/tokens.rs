//! Development credentials of a running stack, read from its state: user tokens signed by the
//! stand-in Clerk issuer, operator tokens for the admin services, and the stack's own service
//! tokens. Local stack only: the keys are the ones `vbase-stack up` generated.

use anyhow::{Context, Result};
use std::time::Duration;
use token_auth::signing::{ServiceTokenMinter, SigningKey};
use vbase_stack::{OPERATOR_SUBJECT, STACK_CALLER, StackState, dev_user_claims};

/// The services a service token may name.
pub const SERVICES: &[&str] = &["identity-service", "workspace-service"];

fn key(file: Option<&std::path::PathBuf>, what: &str) -> Result<SigningKey> {
    let file = file.with_context(|| format!("this stack has no {what}"))?;
    let pem =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(SigningKey::from_pem(&pem)?)
}

/// A development user token (the `convex` template's claims), active in `org` with `role`.
pub fn user(
    state: &StackState,
    user: &str,
    org: Option<&str>,
    role: &str,
    name: &str,
    email: &str,
) -> Result<String> {
    let key = key(
        state.clerk_signing_key_file.as_ref(),
        "development issuer (it uses a real Clerk issuer: get tokens from Clerk)",
    )?;
    Ok(key.sign(&dev_user_claims(state, user, org, role, name, email))?)
}

fn service_token(key: SigningKey, subject: &str, audience: &str) -> Result<String> {
    anyhow::ensure!(
        SERVICES.contains(&audience),
        "unknown service {audience:?}; one of: {}",
        SERVICES.join(", ")
    );
    let minter =
        ServiceTokenMinter::new(key, "vbase-internal", subject, Duration::from_secs(15 * 60));
    Ok(minter.token_for(audience)?)
}

/// An operator's token for `service`'s admin service (15 minutes).
pub fn operator(state: &StackState, service: &str) -> Result<String> {
    let key = key(state.operator_key_file.as_ref(), "operator key")?;
    service_token(key, OPERATOR_SUBJECT, service)
}

/// The stack's own service token for `service` (granted every service method; 15 minutes).
pub fn stack_caller(state: &StackState, service: &str) -> Result<String> {
    let key = key(state.service_key_file.as_ref(), "service key")?;
    service_token(key, STACK_CALLER, service)
}
