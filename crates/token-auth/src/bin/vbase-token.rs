//! `vbase-token`: the operators' service tokens, made outside the cluster with a key the
//! gateway never holds.
//!
//! - `vbase-token keygen --subject operator --out-dir DIR` writes a new Ed25519 key bound to
//!   its subject: `signing-key.pem` (kept by the operators) and `jwks.json` (its public half, to
//!   add to the services' `service-jwks`).
//! - `vbase-token mint --key-file DIR/signing-key.pem --audience workspace-service [--subject
//!   operator] [--ttl 15m]` prints a short-lived service token for a grpcurl call to an admin
//!   service.
//!
//! The services accept a key's tokens only for the subjects its JWK names, so the gateway's key
//! cannot make an operator's token, nor this key the gateway's. Exit status 2 for bad options.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use token_auth::signing::{ServiceTokenMinter, SigningKey, write_service_key};

/// The services a token may be minted for.
const AUDIENCES: [&str; 2] = ["identity-service", "workspace-service"];

/// Longest lifetime a minted token may have (the services' default TOKEN_MAX_LIFETIME_SECS).
const MAX_TTL: Duration = Duration::from_secs(3600);

#[derive(Parser)]
#[command(
    name = "vbase-token",
    version,
    about = "Operators' service tokens: a key of their own, bound to their subject"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new Ed25519 key bound to `--subject`: `signing-key.pem` (private, mode 0600)
    /// and `jwks.json` (public, for the services' trusted service JWKS).
    Keygen {
        /// The subject the key may sign (e.g. `operator`).
        #[arg(long)]
        subject: String,
        /// Directory to write into (an existing key there is not overwritten).
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Print a short-lived service token signed with `--key-file`.
    Mint(MintArgs),
}

#[derive(clap::Args)]
struct MintArgs {
    /// PKCS#8 PEM private key (`vbase-token keygen` writes one).
    #[arg(long, env = "OPERATOR_KEY_FILE")]
    key_file: PathBuf,
    /// The token's `sub`: one the key is bound to.
    #[arg(long, default_value = "operator")]
    subject: String,
    /// The service the token is for: `identity-service` or `workspace-service`.
    #[arg(long)]
    audience: String,
    /// Lifetime: seconds, or a number with `s`, `m` or `h` (10s to 1h).
    #[arg(long, default_value = "15m", value_parser = parse_ttl)]
    ttl: Duration,
    /// Issuer of service tokens (the services' SERVICE_JWT_ISSUER).
    #[arg(long, env = "SERVICE_JWT_ISSUER", default_value = "vbase-internal")]
    issuer: String,
    /// Key id the token names (default: the key's RFC 7638 thumbprint, as keygen writes it).
    #[arg(long)]
    key_id: Option<String>,
}

/// Parses `90`, `90s`, `15m`, `1h` within 10 s to [`MAX_TTL`].
fn parse_ttl(text: &str) -> Result<Duration, String> {
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
    fn mint(&self) -> Result<String, String> {
        if !AUDIENCES.contains(&self.audience.as_str()) {
            return Err(format!(
                "--audience must be identity-service or workspace-service, got {:?}",
                self.audience
            ));
        }
        let subject = self.subject.trim();
        if !token_auth::valid_subject(subject) {
            return Err("--subject must be 1 to 100 printable characters".into());
        }
        let path = &self.key_file;
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("--key-file (OPERATOR_KEY_FILE) {}: {e}", path.display()))?;
        let mut key = SigningKey::from_pem(&pem)
            .map_err(|e| format!("--key-file (OPERATOR_KEY_FILE) {}: {e}", path.display()))?;
        if let Some(kid) = &self.key_id {
            key = key.with_kid(kid.trim());
        }
        ServiceTokenMinter::new(key, &self.issuer, subject, self.ttl)
            .token_for(&self.audience)
            .map_err(|e| e.to_string())
    }
}

/// One line on stderr, status 2.
fn configuration_error(problem: &str) -> ! {
    eprintln!("vbase-token: configuration error: {problem}");
    std::process::exit(2);
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
            || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        {
            e.exit();
        }
        let text = e.render().to_string();
        let detail: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
            })
            .collect();
        configuration_error(&detail.join(" "))
    });
    match cli.command {
        Command::Keygen { subject, out_dir } => match write_service_key(&out_dir, &subject) {
            Ok(key) => println!(
                "kid {} (bound to {subject}) written to {}",
                key.kid(),
                out_dir.display()
            ),
            Err(e) => configuration_error(&e.to_string()),
        },
        Command::Mint(args) => match args.mint() {
            Ok(token) => println!("{token}"),
            Err(problem) => configuration_error(&problem),
        },
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
