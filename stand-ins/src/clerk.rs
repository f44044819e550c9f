//! A stand-in Clerk issuer (its JWKS endpoint and a signing key), and internal service keys.

use crate::jwks::JwksServer;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use token_auth::signing::{ServiceTokenMinter, SigningKey, now_secs};

/// An active organization to put into a user token.
#[derive(Debug, Clone)]
pub struct OrgClaim {
    /// `org_...`
    pub id: String,
    /// `org:admin`, `org:member`, ...
    pub role: String,
    /// Slug.
    pub slug: String,
}

/// Issues Clerk-style RS256 user tokens and serves their JWKS, like a Clerk Frontend API.
pub struct ClerkStandIn {
    jwks: JwksServer,
    key: SigningKey,
    audience: String,
}

impl std::fmt::Debug for ClerkStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClerkStandIn")
            .field("issuer", &self.issuer())
            .finish()
    }
}

impl ClerkStandIn {
    /// Starts on `127.0.0.1:0` with a fresh RSA key; tokens carry `aud = audience`.
    pub async fn start(audience: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(
            listener,
            audience,
            SigningKey::generate_rsa().map_err(std::io::Error::other)?,
        )
    }

    /// Starts on `listener` with `key`.
    pub fn start_on(
        listener: tokio::net::TcpListener,
        audience: &str,
        key: SigningKey,
    ) -> std::io::Result<Self> {
        let jwks = JwksServer::start_on(listener, SigningKey::jwks(&[&key]))?;
        Ok(Self {
            jwks,
            key,
            audience: audience.to_owned(),
        })
    }

    /// The issuer URL (`CLERK_JWT_ISSUER_DOMAIN`).
    pub fn issuer(&self) -> String {
        self.jwks.issuer()
    }

    /// The JWKS server (to rotate keys or take it down).
    pub fn jwks(&self) -> &JwksServer {
        &self.jwks
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Claims of a JWT-template token (the seed's `convex` template plus org claims).
    pub fn claims(&self, user_id: &str, name: &str, email: &str, org: Option<&OrgClaim>) -> Value {
        let now = now_secs();
        let mut c = json!({
            "iss": self.issuer(), "sub": user_id, "aud": self.audience,
            "iat": now, "nbf": now - 5, "exp": now + 600,
            "name": name, "email": email,
            "org_id": null, "org_role": null, "org_slug": null,
        });
        if let Some(o) = org {
            c["org_id"] = json!(o.id);
            c["org_role"] = json!(o.role);
            c["org_slug"] = json!(o.slug);
        }
        c
    }

    /// Signs arbitrary claims with the issuer's key.
    pub fn sign(&self, claims: &Value) -> String {
        self.key.sign(claims).expect("signing with a generated key")
    }

    /// A valid user token.
    pub fn user_token(
        &self,
        user_id: &str,
        name: &str,
        email: &str,
        org: Option<&OrgClaim>,
    ) -> String {
        self.sign(&self.claims(user_id, name, email, org))
    }
}

/// An internal caller's key pair: the private key signs service tokens, the public JWKS sits in a
/// file as the platform would mount it (`SERVICE_JWKS_FILE`).
pub struct ServiceKeys {
    dir: tempfile::TempDir,
    issuer: String,
    minter: ServiceTokenMinter,
}

impl std::fmt::Debug for ServiceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceKeys")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl ServiceKeys {
    /// Generates an Ed25519 key for caller `subject` and writes `jwks.json` and `signing-key.pem`.
    pub fn generate(issuer: &str, subject: &str) -> std::io::Result<Self> {
        let key = SigningKey::generate_ed25519().map_err(std::io::Error::other)?;
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("jwks.json"),
            SigningKey::jwks(&[&key]).to_string(),
        )?;
        std::fs::write(dir.path().join("signing-key.pem"), key.private_pem())?;
        let minter = ServiceTokenMinter::new(key, issuer, subject, Duration::from_secs(300));
        Ok(Self {
            dir,
            issuer: issuer.to_owned(),
            minter,
        })
    }

    /// Path of the public JWKS file.
    pub fn jwks_file(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    /// Path of the private key PEM.
    pub fn signing_key_file(&self) -> PathBuf {
        self.dir.path().join("signing-key.pem")
    }

    /// Directory holding both files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A service token for the service named `audience`.
    pub fn token_for(&self, audience: &str) -> String {
        self.minter
            .token_for(audience)
            .expect("signing with a generated key")
    }

    /// A service token of another caller, `subject`, signed with the same key (e.g. an operator).
    pub fn token_as(&self, subject: &str, audience: &str) -> String {
        let pem = std::fs::read_to_string(self.signing_key_file()).expect("signing key file");
        let key = SigningKey::from_pem(&pem).expect("a generated key reads back");
        ServiceTokenMinter::new(key, &self.issuer, subject, Duration::from_secs(300))
            .token_for(audience)
            .expect("signing with a generated key")
    }
}
