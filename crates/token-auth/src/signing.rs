//! Signing side of the token scheme: key generation, PEM/JWKS export, and minting.
//!
//! The webhook gateway signs its service tokens with [`ServiceTokenMinter`]; the local
//! development stack and the tests use [`SigningKey::generate_rsa`] as a stand-in Clerk issuer.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Errors of key handling.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The key could not be generated or parsed.
    #[error("key error: {0}")]
    Key(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// A private key that signs JWTs, with its public JWK.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    pkcs8_der: Vec<u8>,
    encoding: EncodingKey,
    public_jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// RFC 7638 thumbprint of the required members of a public JWK.
fn thumbprint(canonical: &str) -> String {
    B64URL.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canonical.as_bytes(),
    ))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(text: &str) -> Result<Vec<u8>, SigningError> {
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| SigningError::Key(format!("not a PEM document: {e}")))
}

impl SigningKey {
    /// A new RSA-2048 key for RS256 (the algorithm of Clerk session tokens).
    pub fn generate_rsa() -> Result<Self, SigningError> {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| SigningError::Key("RSA key generation failed".into()))?;
        let der = kp
            .as_der()
            .map_err(|_| SigningError::Key("RSA key export failed".into()))?;
        Self::from_pkcs8_der(der.as_ref())
    }

    /// A new Ed25519 key for EdDSA (recommended for service tokens).
    pub fn generate_ed25519() -> Result<Self, SigningError> {
        let kp = aws_lc_rs::signature::Ed25519KeyPair::generate()
            .map_err(|_| SigningError::Key("Ed25519 key generation failed".into()))?;
        let doc = kp
            .to_pkcs8v1()
            .map_err(|_| SigningError::Key("Ed25519 key export failed".into()))?;
        Self::from_pkcs8_der(doc.as_ref())
    }

    /// Loads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`), Ed25519 or RSA.
    pub fn from_pem(text: &str) -> Result<Self, SigningError> {
        Self::from_pkcs8_der(&unpem(text)?)
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<Self, SigningError> {
        if let Ok(kp) = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(der) {
            let x = B64URL.encode(kp.public_key().as_ref());
            let kid = thumbprint(&format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#));
            return Ok(Self {
                public_jwk: json!({"kty":"OKP","crv":"Ed25519","x":x,"kid":kid,"alg":"EdDSA","use":"sig"}),
                kid,
                alg: Algorithm::EdDSA,
                encoding: EncodingKey::from_ed_der(der),
                pkcs8_der: der.to_vec(),
            });
        }
        let kp = aws_lc_rs::rsa::KeyPair::from_pkcs8(der).map_err(|e| {
            SigningError::Key(format!("neither an Ed25519 nor an RSA PKCS#8 key: {e}"))
        })?;
        let public = kp.public_key();
        let n = B64URL.encode(public.modulus().big_endian_without_leading_zero());
        let e = B64URL.encode(public.exponent().big_endian_without_leading_zero());
        let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
        let encoding = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", der).as_bytes())
            .map_err(|e| SigningError::Key(e.to_string()))?;
        Ok(Self {
            public_jwk: json!({"kty":"RSA","n":n,"e":e,"kid":kid,"alg":"RS256","use":"sig"}),
            kid,
            alg: Algorithm::RS256,
            encoding,
            pkcs8_der: der.to_vec(),
        })
    }

    /// Key id (the RFC 7638 thumbprint unless [`SigningKey::with_kid`] named another).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The same key under the key id `kid`: for a JWKS made with another tool, which names
    /// the key its own way.
    #[must_use]
    pub fn with_kid(mut self, kid: &str) -> Self {
        self.kid = kid.to_owned();
        self.public_jwk["kid"] = Value::String(kid.to_owned());
        self
    }

    /// The same key bound to `subjects`: its public JWK names them
    /// ([`crate::SUBJECTS_MEMBER`]), and a service that trusts the JWK accepts the key's
    /// tokens for those subjects only.
    #[must_use]
    pub fn with_subjects(mut self, subjects: &[&str]) -> Self {
        self.public_jwk[crate::SUBJECTS_MEMBER] = json!(subjects);
        self
    }

    /// Algorithm the key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The private key as PKCS#8 PEM.
    pub fn private_pem(&self) -> String {
        pem("PRIVATE KEY", &self.pkcs8_der)
    }

    /// The public JWK.
    pub fn public_jwk(&self) -> Value {
        self.public_jwk.clone()
    }

    /// A JWKS document holding the public halves of `keys`.
    pub fn jwks(keys: &[&SigningKey]) -> Value {
        json!({ "keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>() })
    }

    /// Signs `claims` with this key's algorithm and `kid`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, SigningError> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }
}

/// Writes a new Ed25519 service key bound to `subject` into `dir`: `signing-key.pem` (the
/// private key, readable by its owner only) and `jwks.json` (its public half, to add to the
/// services' trusted service JWKS). Refuses to overwrite an existing key.
pub fn write_service_key(dir: &std::path::Path, subject: &str) -> Result<SigningKey, SigningError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if !crate::valid_subject(subject) {
        return Err(SigningError::Key(format!(
            "{subject:?} is not a token subject (1 to 100 printable characters)"
        )));
    }
    let key = SigningKey::generate_ed25519()?.with_subjects(&[subject]);
    let io = |what: &str, e: std::io::Error| SigningError::Key(format!("{what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| io(&dir.display().to_string(), e))?;
    let pem_path = dir.join("signing-key.pem");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&pem_path)
        .and_then(|mut f| f.write_all(key.private_pem().as_bytes()))
        .map_err(|e| io(&pem_path.display().to_string(), e))?;
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, SigningKey::jwks(&[&key]).to_string())
        .map_err(|e| io(&jwks_path.display().to_string(), e))?;
    Ok(key)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Mints short-lived service tokens (`iss`, `sub` = caller, `aud` = target service), reusing a
/// token until half its lifetime has passed.
pub struct ServiceTokenMinter {
    key: SigningKey,
    issuer: String,
    subject: String,
    ttl: Duration,
    cache: Mutex<Vec<(String, String, i64)>>,
}

impl std::fmt::Debug for ServiceTokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokenMinter")
            .field("kid", &self.key.kid)
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl ServiceTokenMinter {
    /// A minter for the caller `subject`, with tokens valid for `ttl`.
    pub fn new(key: SigningKey, issuer: &str, subject: &str, ttl: Duration) -> Self {
        Self {
            key,
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            ttl,
            cache: Mutex::new(Vec::new()),
        }
    }

    /// A token for the service named `audience`.
    pub fn token_for(&self, audience: &str) -> Result<String, SigningError> {
        let now = now_secs();
        let ttl = self.ttl.as_secs() as i64;
        if let Ok(cache) = self.cache.lock()
            && let Some((_, tok, _)) = cache
                .iter()
                .find(|(aud, _, minted)| aud == audience && now - minted < ttl / 2)
        {
            return Ok(tok.clone());
        }
        let token = self.key.sign(&json!({
            "iss": self.issuer, "sub": self.subject, "aud": audience,
            "iat": now, "nbf": now, "exp": now + ttl,
            "jti": uuid::Uuid::new_v4().to_string(),
        }))?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|(aud, _, _)| aud != audience);
            cache.push((audience.to_owned(), token.clone(), now));
        }
        Ok(token)
    }
}
