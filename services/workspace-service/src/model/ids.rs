//! Clerk identifiers, delivery ids and roles as types: a value of one of these has passed its
//! check, so the domain never sees an unchecked string where an id belongs.

use diesel_async::AsyncPgConnection;
use input_validation::Invalid;
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A Clerk organization id (`org_...`), the key of a workspace.
    OrgId
);
string_id!(
    /// A Clerk user id (`user_...`).
    UserId
);
string_id!(
    /// A delivery id (the `svix-id` of a webhook), recorded once per service.
    EventId
);
string_id!(
    /// A normalised organization role (`org:admin`, `org:member`, or a custom `org:...`).
    Role
);

impl OrgId {
    /// Checks `id` as the value of `field`.
    pub fn parse(field: &str, id: &str) -> Result<Self, Invalid> {
        input_validation::org_id(field, id)?;
        Ok(Self(id.to_owned()))
    }
}

impl UserId {
    /// Checks `id` as the value of `field`.
    pub fn parse(field: &str, id: &str) -> Result<Self, Invalid> {
        input_validation::user_id(field, id)?;
        Ok(Self(id.to_owned()))
    }
}

impl EventId {
    /// Checks a delivery id.
    pub fn parse(id: &str) -> Result<Self, Invalid> {
        input_validation::event_id(id)?;
        Ok(Self(id.to_owned()))
    }
}

/// Longest role name Clerk may send that we store.
pub const MAX_ROLE: usize = 64;

impl Role {
    /// Checks and normalises a role (`admin` and `org:admin` are the same role).
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let r = input_validation::required_text("role", raw, MAX_ROLE)?;
        Ok(Self(token_auth::normalize_role(&r)))
    }

    /// Checks a role key given in a setting: normalised as [`Role::parse`], then `org:` and
    /// what Clerk allows in a key (lowercase letters, digits, underscores). Stricter than a
    /// webhook's role: a key that cannot be Clerk's is a typo that would match no token.
    pub fn key(raw: &str) -> Result<Self, Invalid> {
        let role = Self::parse(raw)?;
        let key = role.0.strip_prefix("org:").unwrap_or_default();
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        if key.is_empty() || !key.chars().all(allowed) {
            return Err(Invalid(format!(
                "{raw:?} is not a Clerk role key (org: and lowercase letters, digits or underscores)"
            )));
        }
        Ok(role)
    }
}

/// What a transaction-scoped advisory lock serialises. A transaction that needs both takes
/// the organization first, then the user ([`LockKey::lock_membership`]), so two such
/// transactions wait for each other instead of deadlocking.
#[derive(Debug, Clone, Copy)]
pub enum LockKey<'a> {
    /// Every writer of one workspace and its memberships.
    Org(&'a OrgId),
    /// Every writer of one user's memberships and receipts.
    User(&'a UserId),
}

impl LockKey<'_> {
    /// Waits for the lock; it is held until the current transaction ends.
    pub async fn lock(self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
        let key = match self {
            LockKey::Org(o) => format!("org:{o}"),
            LockKey::User(u) => format!("user:{u}"),
        };
        service_runtime::db::lock_entity(conn, &key).await
    }

    /// Locks an organization and a user, in the one order every caller uses.
    pub async fn lock_membership(
        conn: &mut AsyncPgConnection,
        org: &OrgId,
        user: &UserId,
    ) -> diesel::QueryResult<()> {
        LockKey::Org(org).lock(conn).await?;
        LockKey::User(user).lock(conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_once() {
        assert!(OrgId::parse("clerk_org_id", "org_1").is_ok());
        assert!(OrgId::parse("clerk_org_id", "user_1").is_err());
        assert!(UserId::parse("clerk_user_id", "org_1").is_err());
        assert!(EventId::parse("").is_err());
        assert_eq!(Role::parse("admin").unwrap().as_str(), "org:admin");
        assert_eq!(Role::parse("basic_member").unwrap().as_str(), "org:member");
        assert!(Role::parse(&"r".repeat(MAX_ROLE + 1)).is_err());
        assert!(Role::parse("  ").is_err());
    }

    #[test]
    fn role_keys_are_normalised_and_must_be_clerks() {
        assert_eq!(Role::key("admin").unwrap().as_str(), "org:admin");
        assert_eq!(Role::key(" org:owner ").unwrap().as_str(), "org:owner");
        assert_eq!(Role::key("member").unwrap().as_str(), "org:member");
        assert_eq!(
            Role::key("org:team_lead2").unwrap().as_str(),
            "org:team_lead2"
        );
        for bad in [
            "",
            "org:",
            "org:Owner",
            "org:a-b",
            "org:a b",
            "org:a:b",
            "org:*",
            "ørg",
        ] {
            assert!(Role::key(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Role::key(&format!("org:{}", "r".repeat(MAX_ROLE))).is_err());
    }
}
