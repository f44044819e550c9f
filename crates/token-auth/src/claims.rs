//! Verified identities and the mapping from Clerk claim styles onto them.

use crate::error::AuthError;
use serde::Deserialize;

/// Who is calling, after the token was verified. Handlers read it from the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A person, from a Clerk token.
    User(UserPrincipal),
    /// An internal service (for example the webhook gateway), from a service token.
    Service(ServicePrincipal),
}

impl Principal {
    /// The user, when the caller is one.
    pub fn as_user(&self) -> Option<&UserPrincipal> {
        match self {
            Principal::User(u) => Some(u),
            Principal::Service(_) => None,
        }
    }

    /// Whether the caller is an internal service.
    pub fn is_service(&self) -> bool {
        matches!(self, Principal::Service(_))
    }

    /// `exp` of the token (Unix seconds): a stream opened with it ends then.
    pub fn expires_at(&self) -> i64 {
        match self {
            Principal::User(u) => u.expires_at,
            Principal::Service(s) => s.expires_at,
        }
    }
}

/// A Clerk user, with the claims the services use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPrincipal {
    /// Clerk user id (`sub`), `user_...`.
    pub user_id: String,
    /// `name` claim of a JWT template, when present and not empty.
    pub name: Option<String>,
    /// `email` claim of a JWT template, when present and not empty.
    pub email: Option<String>,
    /// `picture` claim of a JWT template (Clerk's `{{user.image_url}}`), when present and not
    /// empty.
    pub picture: Option<String>,
    /// The active organization, from v1 `org_*` claims or the v2 `o` claim.
    pub org: Option<ActiveOrg>,
    /// `iat` of the token (Unix seconds).
    pub issued_at: i64,
    /// `exp` of the token (Unix seconds): a stream opened with it ends then.
    pub expires_at: i64,
    /// Who acts as the user when Clerk's impersonation made the session (`act.sub`, the
    /// impersonator's user id): logged with every call, so what support staff did as a user is
    /// told apart from what the user did.
    pub actor: Option<String>,
}

/// The organization that is active in the user's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveOrg {
    /// Clerk organization id, `org_...`.
    pub id: String,
    /// Slug, when the organization has one.
    pub slug: Option<String>,
    /// Normalised role: `org:admin`, `org:member` or `org:<custom>`. What a role may do is
    /// each service's setting (Clerk lets an instance rename its admin and member roles).
    pub role: String,
}

/// An internal service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePrincipal {
    /// `sub` of the service token, for example `webhook-gateway`.
    pub name: String,
    /// `exp` of the token (Unix seconds): a stream opened with it ends then.
    pub expires_at: i64,
}

/// Normalises a Clerk role to the `org:` form: `admin` → `org:admin`, the legacy `basic_member`
/// and `member` → `org:member`, `org:x` unchanged, `x` → `org:x`.
pub fn normalize_role(role: &str) -> String {
    let role = role.trim();
    let bare = role.strip_prefix("org:").unwrap_or(role);
    match bare {
        "basic_member" | "member" => "org:member".to_owned(),
        other => format!("org:{other}"),
    }
}

/// The claims of a Clerk token that we read (unknown claims are ignored).
#[derive(Debug, Deserialize)]
pub(crate) struct ClerkClaims {
    pub sub: String,
    /// Required and checked by verification; kept to bound how long a verified token is cached.
    pub exp: i64,
    #[serde(default)]
    pub azp: Option<String>,
    #[serde(default)]
    pub iat: Option<i64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub picture: Option<String>,
    #[serde(default)]
    pub org_id: Option<String>,
    #[serde(default)]
    pub org_role: Option<String>,
    #[serde(default)]
    pub org_slug: Option<String>,
    #[serde(default)]
    pub o: Option<OrgClaimV2>,
    /// v2 session status: `pending` while the user has sign-in tasks left (for example
    /// choosing an organization when one is required).
    #[serde(default)]
    pub sts: Option<serde_json::Value>,
    /// Session id and claims version: only a session token (with `sid`, or `v: 2`) carries a
    /// session status; a JWT template may use `sts` for a value of its own.
    #[serde(default)]
    pub sid: Option<serde_json::Value>,
    #[serde(default)]
    pub v: Option<serde_json::Value>,
    /// Impersonation: who acts as the user (`act: {iss, sid, sub}`). Read leniently: a JWT
    /// template may use the name for a value of its own.
    #[serde(default)]
    pub act: Option<serde_json::Value>,
}

/// The v2 session-token `o` claim.
#[derive(Debug, Deserialize)]
pub(crate) struct OrgClaimV2 {
    pub id: String,
    #[serde(default)]
    pub slg: Option<String>,
    #[serde(default)]
    pub rol: Option<String>,
}

/// JWT-template shortcodes render missing values as null or as the string "null".
fn present(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v != "null")
}

impl ClerkClaims {
    /// The principal the claims describe. An active organization without a role is refused
    /// rather than given a default: Clerk's session tokens always carry the role with the
    /// organization (`org_role`, or `o.rol`), so a token without one comes from a JWT template
    /// that left it out, and any default could grant more than the user's real role.
    /// A session token whose status (`sts`) is not `active` is refused: a `pending` one unless
    /// `accept_pending` (Clerk's own SDKs treat it as signed out by default), any other always.
    /// A JWT-template token (no `sid`, no `v: 2`) carries no session status: its `sts` is not read.
    pub(crate) fn into_principal(self, accept_pending: bool) -> Result<UserPrincipal, AuthError> {
        let session = self.sid.is_some() || self.v.as_ref().and_then(|v| v.as_i64()) == Some(2);
        match self.sts.as_ref().filter(|_| session).map(|s| s.as_str()) {
            None | Some(Some("active")) => {}
            Some(Some("pending")) if accept_pending => {}
            Some(Some("pending")) => return Err(AuthError::PendingSession),
            Some(_) => return Err(AuthError::InactiveSession),
        }
        let org = match (present(self.org_id), self.o) {
            (Some(id), _) => Some(active_org(id, self.org_slug, self.org_role)?),
            (None, Some(o)) => match present(Some(o.id)) {
                Some(id) => Some(active_org(id, o.slg, o.rol)?),
                None => None,
            },
            (None, None) => None,
        };
        Ok(UserPrincipal {
            user_id: self.sub,
            name: present(self.name),
            email: present(self.email),
            picture: present(self.picture),
            org,
            issued_at: self.iat.unwrap_or_default(),
            expires_at: self.exp,
            actor: present(
                self.act
                    .as_ref()
                    .and_then(|a| a.get("sub"))
                    .and_then(|s| s.as_str())
                    .map(str::to_owned),
            ),
        })
    }
}

/// The active organization `id` with its slug and (required) role.
fn active_org(
    id: String,
    slug: Option<String>,
    role: Option<String>,
) -> Result<ActiveOrg, AuthError> {
    let role = present(role).ok_or(AuthError::MissingOrgRole)?;
    Ok(ActiveOrg {
        id,
        slug: present(slug),
        role: normalize_role(&role),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_normalise_to_org_prefix() {
        assert_eq!(normalize_role("admin"), "org:admin");
        assert_eq!(normalize_role("org:admin"), "org:admin");
        assert_eq!(normalize_role("basic_member"), "org:member");
        assert_eq!(normalize_role("org:member"), "org:member");
        assert_eq!(normalize_role("billing"), "org:billing");
        assert_eq!(normalize_role("org:billing"), "org:billing");
    }

    #[test]
    fn v1_and_v2_org_claims_map_to_the_same_org() {
        let v1: ClerkClaims = serde_json::from_value(serde_json::json!({
            "sub": "user_1", "exp": 2_000_000_000_i64, "org_id": "org_9", "org_role": "org:admin", "org_slug": "acme"
        }))
        .unwrap();
        let v2: ClerkClaims = serde_json::from_value(serde_json::json!({
            "sub": "user_1", "exp": 2_000_000_000_i64, "o": {"id": "org_9", "slg": "acme", "rol": "admin"}
        }))
        .unwrap();
        let a = v1.into_principal(false).unwrap().org.unwrap();
        let b = v2.into_principal(false).unwrap().org.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.role, "org:admin");
    }

    #[test]
    fn template_nulls_mean_no_org() {
        let c: ClerkClaims = serde_json::from_value(serde_json::json!({
            "sub": "user_1", "exp": 2_000_000_000_i64, "org_id": null, "org_role": "null", "name": "", "email": "null"
        }))
        .unwrap();
        let p = c.into_principal(false).unwrap();
        assert_eq!(p.org, None);
        assert_eq!(p.name, None);
        assert_eq!(p.email, None);
    }

    #[test]
    fn an_active_organization_without_a_role_is_refused() {
        for claims in [
            serde_json::json!({"sub": "user_1", "exp": 2_000_000_000_i64, "org_id": "org_9"}),
            serde_json::json!({"sub": "user_1", "exp": 2_000_000_000_i64, "org_id": "org_9", "org_role": "null"}),
            serde_json::json!({"sub": "user_1", "exp": 2_000_000_000_i64, "org_id": "org_9", "org_role": " "}),
            serde_json::json!({"sub": "user_1", "exp": 2_000_000_000_i64, "o": {"id": "org_9", "slg": "acme"}}),
        ] {
            let c: ClerkClaims = serde_json::from_value(claims.clone()).unwrap();
            assert_eq!(
                c.into_principal(false).unwrap_err(),
                AuthError::MissingOrgRole,
                "{claims}"
            );
        }
    }
}
