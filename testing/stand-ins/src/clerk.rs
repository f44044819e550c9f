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

    /// Claims of a v2 Clerk session token, as Clerk mints them (`v: 2`, the session `sid`,
    /// `azp`, `jti`, `fva`, a 60 s lifetime, the active organization in `o` with the role key
    /// without its `org:` prefix), with `aud` as the Convex integration maps it in. `status`:
    /// `sts` when the session is not simply active (`pending`).
    pub fn session_claims(
        &self,
        user_id: &str,
        org: Option<&OrgClaim>,
        status: Option<&str>,
    ) -> Value {
        let now = now_secs();
        let mut c = json!({
            "iss": self.issuer(), "sub": user_id, "aud": self.audience, "v": 2,
            "sid": format!("sess_{user_id}"), "azp": "http://localhost:3000",
            "jti": format!("jti{now}{user_id}"), "fva": [0, -1],
            "iat": now, "nbf": now - 5, "exp": now + 60,
        });
        if let Some(o) = org {
            let rol = o.role.strip_prefix("org:").unwrap_or(&o.role);
            c["o"] = json!({"id": o.id, "slg": o.slug, "rol": rol, "per": "", "fpm": ""});
        }
        if let Some(s) = status {
            c["sts"] = json!(s);
        }
        c
    }

    /// A valid v2 session token ([`ClerkStandIn::session_claims`]).
    pub fn session_token(&self, user_id: &str, org: Option<&OrgClaim>) -> String {
        self.sign(&self.session_claims(user_id, org, None))
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

/// Internal callers' key pairs, one per subject and bound to it (as `webhook-gateway keygen`
/// and `vbase-token keygen` make them): the private keys sign service tokens, the public JWKS
/// of all of them sits in a file as the platform would mount it (`SERVICE_JWKS_FILE`).
pub struct ServiceKeys {
    dir: tempfile::TempDir,
    issuer: String,
    /// Subject, key (with the kid the JWKS names it by), minter; the first is the default.
    keys: Vec<(String, SigningKey, ServiceTokenMinter)>,
}

impl std::fmt::Debug for ServiceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceKeys")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl ServiceKeys {
    /// Generates an Ed25519 key for each of `subjects` (the first is the default caller), bound
    /// to it, and writes `jwks.json` and one `<subject>.pem` per key.
    pub fn generate(issuer: &str, subjects: &[&str]) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut keys = Vec::new();
        for subject in subjects {
            let key = SigningKey::generate_ed25519()
                .map_err(std::io::Error::other)?
                .with_subjects(&[subject]);
            std::fs::write(dir.path().join(format!("{subject}.pem")), key.private_pem())?;
            let minter = ServiceTokenMinter::new(
                SigningKey::from_pem(&key.private_pem()).map_err(std::io::Error::other)?,
                issuer,
                subject,
                Duration::from_secs(300),
            );
            keys.push((subject.to_string(), key, minter));
        }
        let this = Self {
            dir,
            issuer: issuer.to_owned(),
            keys,
        };
        this.write_jwks()?;
        Ok(this)
    }

    fn write_jwks(&self) -> std::io::Result<()> {
        let public: Vec<&SigningKey> = self.keys.iter().map(|(_, k, _)| k).collect();
        std::fs::write(self.jwks_file(), SigningKey::jwks(&public).to_string())
    }

    fn entry(&self, subject: &str) -> &(String, SigningKey, ServiceTokenMinter) {
        self.keys
            .iter()
            .find(|(s, _, _)| s == subject)
            .unwrap_or_else(|| panic!("no service key is bound to {subject}"))
    }

    /// Path of the public JWKS file.
    pub fn jwks_file(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    /// Path of the default caller's private key PEM.
    pub fn signing_key_file(&self) -> PathBuf {
        self.signing_key_file_of(&self.keys[0].0)
    }

    /// Path of the private key PEM bound to `subject`.
    pub fn signing_key_file_of(&self, subject: &str) -> PathBuf {
        let (subject, _, _) = self.entry(subject);
        self.dir.path().join(format!("{subject}.pem"))
    }

    /// Directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The JWKS names the key bound to `subject` `kid` (a JWKS made with another tool);
    /// tokens of [`ServiceKeys::token_as`] name it so too.
    pub fn rename_key(&mut self, subject: &str, kid: &str) -> std::io::Result<()> {
        let issuer = self.issuer.clone();
        let (_, key, minter) = self
            .keys
            .iter_mut()
            .find(|(s, _, _)| s == subject)
            .ok_or_else(|| {
                std::io::Error::other(format!("no service key is bound to {subject}"))
            })?;
        let private = key.private_pem();
        *key = SigningKey::from_pem(&private)
            .map_err(std::io::Error::other)?
            .with_kid(kid)
            .with_subjects(&[subject]);
        *minter = ServiceTokenMinter::new(
            SigningKey::from_pem(&private)
                .map_err(std::io::Error::other)?
                .with_kid(kid),
            &issuer,
            subject,
            Duration::from_secs(300),
        );
        self.write_jwks()
    }

    /// A service token of the default caller for the service named `audience`.
    pub fn token_for(&self, audience: &str) -> String {
        self.keys[0]
            .2
            .token_for(audience)
            .expect("signing with a generated key")
    }

    /// A service token of `subject` (e.g. an operator), signed with the key bound to it.
    pub fn token_as(&self, subject: &str, audience: &str) -> String {
        self.entry(subject)
            .2
            .token_for(audience)
            .expect("signing with a generated key")
    }

    /// A service token of `subject` signed with the key bound to `signer`: what a stolen key
    /// would make (the services refuse it unless `signer`'s key is bound to `subject`).
    pub fn token_signed_by(&self, signer: &str, subject: &str, audience: &str) -> String {
        let (_, key, _) = self.entry(signer);
        ServiceTokenMinter::new(
            SigningKey::from_pem(&key.private_pem())
                .expect("a generated key reads back")
                .with_kid(key.kid()),
            &self.issuer,
            subject,
            Duration::from_secs(300),
        )
        .token_for(audience)
        .expect("signing with a generated key")
    }
}
