//! Token verification: picks the trust domain by issuer, then verifies signature and claims.

use crate::claims::{ClerkClaims, Principal, ServicePrincipal};
use crate::error::AuthError;
use crate::keys::{KeySource, KeyStore, KeyStoreOptions, StoredKey};
use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use std::sync::Arc;

/// How many verified tokens are remembered (about 300 bytes each).
const VERIFIED_CACHE_ENTRIES: usize = 10_000;

/// Tokens longer than this are rejected before any parsing.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clerk's own default clock skew; the most leeway we allow.
pub const MAX_LEEWAY_SECS: u64 = 5;

/// Checks `iat` against `exp`: present, not in the future beyond `leeway`, and a lifetime of
/// at most `max_lifetime` seconds.
fn check_lifetime(
    iat: Option<i64>,
    exp: i64,
    leeway: u64,
    max_lifetime: i64,
) -> Result<(), AuthError> {
    let iat = iat.ok_or(AuthError::MissingIssuedAt)?;
    if iat > crate::signing::now_secs().saturating_add(leeway as i64) {
        return Err(AuthError::NotYetValid);
    }
    if exp.saturating_sub(iat) > max_lifetime {
        return Err(AuthError::LifetimeTooLong);
    }
    Ok(())
}

/// How Clerk user tokens are checked.
#[derive(Debug, Clone)]
pub struct ClerkSettings {
    /// Exact `iss`: the Clerk Frontend API URL, no trailing slash.
    pub issuer: String,
    /// Where Clerk's keys come from (default `{issuer}/.well-known/jwks.json`).
    pub jwks: KeySource,
    /// A value `aud` must contain (the seed's applicationID is `convex`).
    pub audience: String,
    /// When not empty, a present `azp` must be one of these origins.
    pub authorized_parties: Vec<String>,
    /// With `authorized_parties` set, whether a token without `azp` is refused. Clerk omits
    /// `azp` when the request that minted the token had no `Origin` (a native app).
    pub require_azp: bool,
    /// Seconds of clock leeway for `exp`/`nbf`, at most [`MAX_LEEWAY_SECS`].
    pub leeway_secs: u64,
    /// The longest lifetime (`exp - iat`) accepted, seconds.
    pub max_lifetime_secs: i64,
    /// Whether a session token of a pending session (`sts: "pending"`) is accepted. Clerk's
    /// SDKs treat pending sessions as signed out unless told otherwise; so does the default.
    pub accept_pending_sessions: bool,
}

/// How internal service tokens are checked.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Exact `iss` of service tokens (default `vbase-internal`).
    pub issuer: String,
    /// Where the services' public keys come from.
    pub jwks: KeySource,
    /// The receiving service's name, which `aud` must contain.
    pub audience: String,
    /// The longest lifetime (`exp - iat`) accepted, seconds.
    pub max_lifetime_secs: i64,
}

struct Domain<S> {
    settings: S,
    keys: Arc<KeyStore>,
}

/// Verifies bearer tokens of both kinds into a [`Principal`].
///
/// A token that verified once is remembered by its SHA-256 digest, so the next call with the
/// same token (the gateway reuses its token for minutes, a browser its Clerk token for up to a
/// minute) costs a hash and a lookup instead of a signature check. A remembered token is
/// accepted only while it is unexpired (same leeway) and the key that verified it is still the
/// one loaded for its `kid`; a key removed from the JWKS ends its tokens at the next refresh.
pub struct Authenticator {
    clerk: Option<Domain<ClerkSettings>>,
    service: Option<Domain<ServiceSettings>>,
    verified: quick_cache::sync::Cache<[u8; 32], Arc<Verified>>,
    callers: crate::ServiceCallers,
}

/// A token that passed every check, and what its acceptance depends on.
struct Verified {
    principal: Principal,
    exp: i64,
    leeway: u64,
    kid: String,
    key: Arc<StoredKey>,
    keys: Arc<KeyStore>,
}

impl Verified {
    fn still_valid(&self, now: i64) -> bool {
        now <= self.exp.saturating_add(self.leeway as i64)
            && self
                .keys
                .get(&self.kid)
                .is_some_and(|k| Arc::ptr_eq(&k, &self.key))
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("clerk", &self.clerk.as_ref().map(|d| &d.settings))
            .field("service", &self.service.as_ref().map(|d| &d.settings))
            .finish()
    }
}

#[derive(Deserialize)]
struct IssuerOnly {
    iss: Option<String>,
}

#[derive(Deserialize)]
struct ServiceClaims {
    sub: String,
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
}

impl Authenticator {
    /// Builds the verifier and starts the key refresh tasks (needs a Tokio runtime).
    pub fn new(
        clerk: Option<ClerkSettings>,
        service: Option<ServiceSettings>,
        options: KeyStoreOptions,
    ) -> Self {
        let clerk = clerk.map(|mut settings| {
            settings.leeway_secs = settings.leeway_secs.min(MAX_LEEWAY_SECS);
            let keys = KeyStore::spawn(settings.jwks.clone(), vec![Algorithm::RS256], options);
            Domain { settings, keys }
        });
        let service = service.map(|settings| {
            let keys = KeyStore::spawn_bound(
                settings.jwks.clone(),
                vec![Algorithm::EdDSA, Algorithm::RS256],
                options,
            );
            Domain { settings, keys }
        });
        Self {
            clerk,
            service,
            verified: quick_cache::sync::Cache::new(VERIFIED_CACHE_ENTRIES),
            callers: crate::ServiceCallers::default(),
        }
    }

    /// Internal callers other than the gateway, with what they may call (none by default).
    #[must_use]
    pub fn with_service_callers(mut self, callers: crate::ServiceCallers) -> Self {
        self.callers = callers;
        self
    }

    /// Internal callers other than the gateway, with what they may call.
    pub fn service_callers(&self) -> &crate::ServiceCallers {
        &self.callers
    }

    /// The key stores in use by what they verify (`clerk`, `service`), for metrics.
    pub fn named_key_stores(&self) -> Vec<(&'static str, Arc<KeyStore>)> {
        self.clerk
            .iter()
            .map(|d| ("clerk", Arc::clone(&d.keys)))
            .chain(
                self.service
                    .iter()
                    .map(|d| ("service", Arc::clone(&d.keys))),
            )
            .collect()
    }

    /// The key stores in use (Clerk first), for readiness checks and metrics.
    pub fn key_stores(&self) -> Vec<Arc<KeyStore>> {
        self.clerk
            .iter()
            .map(|d| Arc::clone(&d.keys))
            .chain(self.service.iter().map(|d| Arc::clone(&d.keys)))
            .collect()
    }

    /// Verifies the value of an `authorization` header.
    pub fn verify_header(&self, value: Option<&str>) -> Result<Principal, AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Malformed)?;
        self.verify(token.trim())
    }

    /// Like [`Authenticator::verify_header`], but a token signed with a key not loaded yet (a
    /// key Clerk rotated in) waits at most `bound` for the (throttled) re-fetch, then is
    /// verified again.
    pub async fn verify_header_waiting(
        &self,
        value: Option<&str>,
        bound: std::time::Duration,
    ) -> Result<Principal, AuthError> {
        match self.verify_header(value) {
            Err(AuthError::UnknownKey) => {
                let token = value.unwrap_or_default();
                let token = token
                    .strip_prefix("Bearer ")
                    .or_else(|| token.strip_prefix("bearer "))
                    .unwrap_or(token)
                    .trim();
                let keys = self.keys_for(token)?;
                let kid = jsonwebtoken::decode_header(token)
                    .ok()
                    .and_then(|h| h.kid)
                    .ok_or(AuthError::MissingKeyId)?;
                match keys.wait_for(&kid, bound).await {
                    Some(_) => self.verify(token),
                    None => Err(AuthError::UnknownKey),
                }
            }
            other => other,
        }
    }

    /// The key store of the token's issuer.
    fn keys_for(&self, token: &str) -> Result<Arc<KeyStore>, AuthError> {
        let issuer = peek_issuer(token)?;
        self.clerk
            .iter()
            .filter(|d| d.settings.issuer == issuer)
            .map(|d| Arc::clone(&d.keys))
            .chain(
                self.service
                    .iter()
                    .filter(|d| d.settings.issuer == issuer)
                    .map(|d| Arc::clone(&d.keys)),
            )
            .next()
            .ok_or(AuthError::UntrustedIssuer)
    }

    /// Verifies a compact JWT.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref(),
        );
        if let Some(hit) = self.verified.get(&digest) {
            if hit.still_valid(crate::signing::now_secs()) {
                return Ok(hit.principal.clone());
            }
            self.verified.remove(&digest);
        }
        let verified = self.verify_uncached(token)?;
        let principal = verified.principal.clone();
        self.verified.insert(digest, Arc::new(verified));
        Ok(principal)
    }

    fn verify_uncached(&self, token: &str) -> Result<Verified, AuthError> {
        let issuer = peek_issuer(token)?;
        if let Some(d) = self.clerk.as_ref().filter(|d| d.settings.issuer == issuer) {
            let s = &d.settings;
            let (claims, kid, key): (ClerkClaims, _, _) =
                verify_with(token, &d.keys, &s.issuer, &s.audience, s.leeway_secs)?;
            check_lifetime(claims.iat, claims.exp, s.leeway_secs, s.max_lifetime_secs)?;
            if !s.authorized_parties.is_empty() {
                match claims.azp.as_ref() {
                    None if s.require_azp => return Err(AuthError::MissingParty),
                    None => {}
                    Some(azp) if !s.authorized_parties.iter().any(|p| p == azp) => {
                        return Err(AuthError::UnauthorizedParty);
                    }
                    Some(_) => {}
                }
            }
            return Ok(Verified {
                exp: claims.exp,
                principal: Principal::User(claims.into_principal(s.accept_pending_sessions)?),
                leeway: s.leeway_secs,
                kid,
                key,
                keys: Arc::clone(&d.keys),
            });
        }
        if let Some(d) = self
            .service
            .as_ref()
            .filter(|d| d.settings.issuer == issuer)
        {
            let s = &d.settings;
            let (claims, kid, key): (ServiceClaims, _, _) =
                verify_with(token, &d.keys, &s.issuer, &s.audience, MAX_LEEWAY_SECS)?;
            check_lifetime(claims.iat, claims.exp, MAX_LEEWAY_SECS, s.max_lifetime_secs)?;
            // A service key signs only the subjects its JWK names: the gateway's key cannot
            // make an operator's (or any other caller's) token.
            if !key
                .subjects
                .as_ref()
                .is_some_and(|bound| bound.contains(&claims.sub))
            {
                return Err(AuthError::SubjectNotAllowed);
            }
            return Ok(Verified {
                exp: claims.exp,
                principal: Principal::Service(ServicePrincipal {
                    name: claims.sub,
                    expires_at: claims.exp,
                }),
                leeway: MAX_LEEWAY_SECS,
                kid,
                key,
                keys: Arc::clone(&d.keys),
            });
        }
        Err(AuthError::UntrustedIssuer)
    }
}

/// Reads `iss` without trusting it, only to choose which keys and rules apply.
fn peek_issuer(token: &str) -> Result<String, AuthError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    let claims: IssuerOnly = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    claims.iss.ok_or(AuthError::InvalidClaims)
}

fn verify_with<T: serde::de::DeserializeOwned>(
    token: &str,
    keys: &KeyStore,
    issuer: &str,
    audience: &str,
    leeway: u64,
) -> Result<(T, String, Arc<StoredKey>), AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::AlgorithmNotAllowed)?;
    let kid = header.kid.as_deref().ok_or(AuthError::MissingKeyId)?;
    let stored: Arc<StoredKey> = keys.get(kid).ok_or(AuthError::UnknownKey)?;
    if header.alg != stored.alg {
        return Err(AuthError::AlgorithmNotAllowed);
    }
    let mut v = Validation::new(stored.alg);
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    jsonwebtoken::decode::<T>(token, &stored.key, &v)
        .map(|d| (d.claims, kid.to_owned(), Arc::clone(&stored)))
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => AuthError::BadSignature,
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidAudience => AuthError::WrongAudience,
                K::InvalidIssuer => AuthError::UntrustedIssuer,
                K::InvalidAlgorithm | K::InvalidAlgorithmName => AuthError::AlgorithmNotAllowed,
                _ => AuthError::InvalidClaims,
            }
        })
}
