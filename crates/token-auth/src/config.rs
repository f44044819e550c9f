//! Environment configuration shared by the services (clap `Args`, flattened into each binary).

use crate::keys::{KeySource, KeyStoreOptions};
use crate::verify::{Authenticator, ClerkSettings, MAX_LEEWAY_SECS, ServiceSettings};
use std::path::PathBuf;
use std::time::Duration;

/// Token settings of a gRPC service.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Clerk Frontend API URL; a user token's `iss` must equal it exactly (e.g. `https://clerk.example.com`).
    #[arg(long, env = "CLERK_JWT_ISSUER_DOMAIN")]
    pub clerk_jwt_issuer_domain: String,
    /// Clerk JWKS URL. Default: `{CLERK_JWT_ISSUER_DOMAIN}/.well-known/jwks.json`.
    #[arg(long, env = "CLERK_JWKS_URL")]
    pub clerk_jwks_url: Option<String>,
    /// Audience a user token's `aud` must contain (the seed's Convex applicationID).
    #[arg(long, env = "CLERK_JWT_AUDIENCE", default_value = "convex")]
    pub clerk_jwt_audience: String,
    /// Comma-separated origins; when set, a user token must name one of them in `azp`.
    #[arg(long, env = "CLERK_AUTHORIZED_PARTIES", value_delimiter = ',')]
    pub clerk_authorized_parties: Vec<String>,
    /// With CLERK_AUTHORIZED_PARTIES set, refuse a user token without `azp`. Clerk leaves `azp`
    /// out when the request that minted the token had no `Origin` (a native app): set `false`
    /// when native apps call, and a present `azp` must still be listed.
    #[arg(long, env = "CLERK_REQUIRE_AZP", default_value_t = true, action = clap::ArgAction::Set)]
    pub clerk_require_azp: bool,
    /// Accept session tokens of pending Clerk sessions (`sts: "pending"`: the user has sign-in
    /// tasks left, such as choosing an organization). Off by default, as in Clerk's SDKs.
    #[arg(long, env = "CLERK_ACCEPT_PENDING_SESSIONS", default_value_t = false)]
    pub clerk_accept_pending_sessions: bool,
    /// Issuer of internal service tokens.
    #[arg(long, env = "SERVICE_JWT_ISSUER", default_value = "vbase-internal")]
    pub service_jwt_issuer: String,
    /// JWKS file with the public keys of internal callers (e.g. the gateway's Ed25519 key).
    #[arg(long, env = "SERVICE_JWKS_FILE")]
    pub service_jwks_file: Option<PathBuf>,
    /// JWKS URL with the public keys of internal callers (instead of SERVICE_JWKS_FILE).
    #[arg(long, env = "SERVICE_JWKS_URL", conflicts_with = "service_jwks_file")]
    pub service_jwks_url: Option<String>,
    /// Seconds between regular key refreshes (10 to 600): a key removed from its JWKS is
    /// trusted until the next one.
    #[arg(long, env = "JWKS_REFRESH_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(10..=600))]
    pub jwks_refresh_secs: u64,
    /// The longest token lifetime (`exp - iat`) accepted, seconds (60 to 86400). Clerk's
    /// session tokens live 60 s; a longer-lived token stays valid after a member is removed.
    #[arg(long, env = "TOKEN_MAX_LIFETIME_SECS", default_value_t = 3600)]
    pub token_max_lifetime_secs: i64,
    /// Internal callers other than the webhook gateway and what they may call, by their
    /// service token's `sub`: `reporting=GetUser,BatchGetUsers;admin-tool=*` (`*`: every method
    /// that admits service tokens). The gateway's subject may call the sync commands only.
    #[arg(long, env = "SERVICE_CALLERS", default_value = "")]
    pub service_callers: String,
    /// Comma-separated service token subjects that may call the admin services
    /// (DeliveryAdminService, WorkspaceAdminService) and nothing else; never the gateway's.
    #[arg(long, env = "OPERATOR_SUBJECTS", default_value = crate::callers::DEFAULT_OPERATOR_SUBJECT)]
    pub operator_subjects: String,
}

impl AuthArgs {
    /// Checks the settings and builds the verifier for the service named `audience`
    /// (e.g. `identity-service`). Errors name the variable at fault.
    pub fn build(&self, audience: &str) -> Result<Authenticator, String> {
        let issuer = self
            .clerk_jwt_issuer_domain
            .trim()
            .trim_end_matches('/')
            .to_owned();
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
            return Err(format!(
                "CLERK_JWT_ISSUER_DOMAIN must be the Clerk Frontend API URL (https://...), got {issuer:?}"
            ));
        }
        let clerk_jwks = self
            .clerk_jwks_url
            .clone()
            .unwrap_or_else(|| format!("{issuer}/.well-known/jwks.json"));
        for (name, url) in [
            (
                "CLERK_JWKS_URL (or CLERK_JWT_ISSUER_DOMAIN)",
                Some(&clerk_jwks),
            ),
            ("SERVICE_JWKS_URL", self.service_jwks_url.as_ref()),
        ] {
            if let Some(url) = url
                && !crate::keys::acceptable_jwks_url(url)
            {
                return Err(format!(
                    "{name} must be an https URL (http only to localhost), got {url:?}"
                ));
            }
        }
        if !(60..=86_400).contains(&self.token_max_lifetime_secs) {
            return Err(format!(
                "TOKEN_MAX_LIFETIME_SECS ({}) must be from 60 to 86400",
                self.token_max_lifetime_secs
            ));
        }
        let service_jwks = match (&self.service_jwks_file, &self.service_jwks_url) {
            (Some(f), _) => KeySource::File(f.clone()),
            (None, Some(u)) => KeySource::Url(u.clone()),
            (None, None) => {
                return Err(
                    "SERVICE_JWKS_FILE or SERVICE_JWKS_URL must be set: internal callers (the webhook gateway) are verified with those keys"
                        .to_owned(),
                );
            }
        };
        if self.service_jwt_issuer.trim().is_empty() {
            return Err("SERVICE_JWT_ISSUER must not be empty".to_owned());
        }
        if self.service_jwt_issuer == issuer {
            return Err("SERVICE_JWT_ISSUER must differ from CLERK_JWT_ISSUER_DOMAIN".to_owned());
        }
        let callers = crate::ServiceCallers::parse(&self.service_callers)?
            .with_operators(&self.operator_subjects)?;
        let options = KeyStoreOptions {
            refresh_interval: Duration::from_secs(self.jwks_refresh_secs.max(10)),
            ..KeyStoreOptions::default()
        };
        Ok(Authenticator::new(
            Some(ClerkSettings {
                issuer,
                jwks: KeySource::Url(clerk_jwks),
                audience: self.clerk_jwt_audience.clone(),
                authorized_parties: self
                    .clerk_authorized_parties
                    .iter()
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect(),
                require_azp: self.clerk_require_azp,
                leeway_secs: MAX_LEEWAY_SECS,
                max_lifetime_secs: self.token_max_lifetime_secs,
                accept_pending_sessions: self.clerk_accept_pending_sessions,
            }),
            Some(ServiceSettings {
                issuer: self.service_jwt_issuer.clone(),
                jwks: service_jwks,
                audience: audience.to_owned(),
                max_lifetime_secs: self.token_max_lifetime_secs,
            }),
            options,
        )
        .with_service_callers(callers))
    }
}
