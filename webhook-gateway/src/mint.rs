//! `webhook-gateway mint-token`: a short-lived service token signed with the gateway's key, for
//! an operator's grpcurl call from `kubectl exec` (the services admit it when its subject is in
//! their OPERATOR_SUBJECTS).

use std::path::PathBuf;
use std::time::Duration;

/// The services a token may be minted for.
pub const AUDIENCES: [&str; 2] = ["identity-service", "workspace-service"];

/// Longest lifetime a minted token may have (the services' default TOKEN_MAX_LIFETIME_SECS).
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// Settings of `mint-token`.
#[derive(Debug, Clone, clap::Args)]
pub struct MintArgs {
    /// The token's `sub`: who calls (e.g. `operator`).
    #[arg(long)]
    pub subject: String,
    /// The service the token is for: `identity-service` or `workspace-service`.
    #[arg(long)]
    pub audience: String,
    /// Lifetime: seconds, or a number with `s`, `m` or `h` (10s to 1h).
    #[arg(long, default_value = "15m", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Issuer of the service tokens.
    #[arg(long, env = "SERVICE_JWT_ISSUER", default_value = "vbase-internal")]
    pub service_jwt_issuer: String,
    /// PKCS#8 PEM private key that signs service tokens.
    #[arg(long, env = "SERVICE_JWT_SIGNING_KEY_FILE")]
    pub service_jwt_signing_key_file: PathBuf,
    /// Key id the token names (default: the key's RFC 7638 thumbprint).
    #[arg(long, env = "SERVICE_JWT_KEY_ID")]
    pub service_jwt_key_id: Option<String>,
}

/// Parses `90`, `90s`, `15m`, `1h` within 10 s to [`MAX_TTL`].
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("ttl {text:?} must be a number of seconds, or end in s, m or h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("ttl {text:?} must end in s, m or h")),
    };
    let d = Duration::from_secs(secs);
    if d < Duration::from_secs(10) || d > MAX_TTL {
        return Err(format!("ttl {text:?} must be from 10s to 1h"));
    }
    Ok(d)
}

impl MintArgs {
    /// What is wrong with the settings, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !AUDIENCES.contains(&self.audience.as_str()) {
            return Err(format!(
                "--audience must be identity-service or workspace-service, got {:?}",
                self.audience
            ));
        }
        let s = self.subject.trim();
        if s.is_empty() || s.len() > 100 || !s.chars().all(|c| c.is_ascii_graphic()) {
            return Err("--subject must be 1 to 100 printable characters".into());
        }
        Ok(())
    }

    /// The signed token.
    pub fn mint(&self) -> anyhow::Result<String> {
        let path = &self.service_jwt_signing_key_file;
        let pem = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("SERVICE_JWT_SIGNING_KEY_FILE {}: {e}", path.display()))?;
        let mut key = token_auth::signing::SigningKey::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("SERVICE_JWT_SIGNING_KEY_FILE {}: {e}", path.display()))?;
        if let Some(kid) = &self.service_jwt_key_id {
            key = key.with_kid(kid.trim());
        }
        let minter = token_auth::signing::ServiceTokenMinter::new(
            key,
            &self.service_jwt_issuer,
            self.subject.trim(),
            self.ttl,
        );
        Ok(minter.token_for(&self.audience)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "5s", "2h", "10x", "m", "-5"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
