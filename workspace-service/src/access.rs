//! Who is calling and what they may do in a workspace.

use crate::error::Error;
use token_auth::Principal;

/// The verified caller of a workspace RPC.
#[derive(Debug, Clone)]
pub enum Caller {
    /// An internal service: may do everything.
    Service,
    /// A Clerk user with their active organization (if any) and role in it.
    User {
        /// `user_...`
        id: String,
        /// Active organization id.
        org_id: Option<String>,
        /// Whether the active-organization role is `org:admin`.
        admin: bool,
    },
}

impl Caller {
    /// From the principal the auth layer verified.
    pub fn from_principal(p: Option<&Principal>) -> Result<Self, Error> {
        match p {
            Some(Principal::Service(_)) => Ok(Caller::Service),
            Some(Principal::User(u)) => Ok(Caller::User {
                id: u.user_id.clone(),
                org_id: u.org.as_ref().map(|o| o.id.clone()),
                admin: u.org.as_ref().is_some_and(|o| o.is_admin()),
            }),
            None => Err(Error::Denied("no verified caller".into())),
        }
    }

    /// Passes when the caller may act in the workspace of Clerk organization `clerk_org_id`.
    pub fn check_org(&self, clerk_org_id: &str) -> Result<(), Error> {
        match self {
            Caller::Service => Ok(()),
            Caller::User {
                org_id: Some(o), ..
            } if o == clerk_org_id => Ok(()),
            Caller::User { org_id: None, .. } => Err(Error::Denied(
                "no active organization in the token: select the workspace in Clerk first".into(),
            )),
            Caller::User { .. } => Err(Error::Denied(
                "not in your active workspace: switch the active organization to act there".into(),
            )),
        }
    }

    /// Passes for services and `org:admin` users (call after [`Caller::check_org`]).
    pub fn require_admin(&self, action: &str) -> Result<(), Error> {
        match self {
            Caller::Service | Caller::User { admin: true, .. } => Ok(()),
            Caller::User { .. } => Err(Error::Denied(format!("{action} needs the org:admin role"))),
        }
    }

    /// The user id, for users.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Caller::Service => None,
            Caller::User { id, .. } => Some(id),
        }
    }

    /// What to record as creator.
    pub fn actor(&self) -> String {
        self.user_id().unwrap_or("service").to_owned()
    }
}

/// The answer for an id the caller cannot see: NOT_FOUND for services, PERMISSION_DENIED for
/// users (they must not learn whether another workspace holds it).
pub fn unseen(caller: &Caller, what: &str) -> Error {
    match caller {
        Caller::Service => Error::NotFound(format!("no such {what}")),
        Caller::User { .. } => Error::Denied(format!("{what} not found in your active workspace")),
    }
}
