//! What a cluster needs to take TCP connections over TLS alone: a CA made for it, a server
//! certificate that CA signed, and a pg_hba.conf that refuses TCP without TLS.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The names the server certificate is for: the hosts the cluster's URLs connect to.
const SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// Local connections as before; over TCP, TLS or nothing (a plain connection finds no entry).
const HBA: &str = "\
local all all trust
hostssl all all 127.0.0.1/32 trust
hostssl all all ::1/128 trust
hostssl replication all 127.0.0.1/32 trust
";

/// Writes into `data_dir` the server's certificate and key (`server.crt`, `server.key`: the
/// names PostgreSQL reads with `ssl = on`) and a hostssl-only `pg_hba.conf`, all owned by
/// `owner` (the account the server runs as), and the certificate of the CA that signed the
/// server's to `ca_file`. The CA is made now, for this cluster alone.
pub(crate) fn write_files(
    data_dir: &Path,
    ca_file: &Path,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let (ca_pem, issuer) = new_ca()?;
    let key = KeyPair::generate().context("making the server's key")?;
    let mut params = CertificateParams::new(SERVER_NAMES.map(String::from).to_vec())?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the server's certificate")?;
    write(&data_dir.join("server.crt"), &cert.pem(), owner)?;
    // PostgreSQL refuses a key that others may read.
    write(&data_dir.join("server.key"), &key.serialize_pem(), owner)?;
    write(&data_dir.join("pg_hba.conf"), HBA, owner)?;
    write(ca_file, &ca_pem, None)
}

/// A CA for one cluster: its certificate (PEM) and what signs with its key.
fn new_ca() -> Result<(String, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate().context("making the CA's key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "ephemeral-postgres test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params
        .self_signed(&key)
        .context("signing the CA's certificate")?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// Writes `text` to a new file at `path` that its owner alone may read, owned by `owner`.
fn write(path: &Path, text: &str, owner: Option<(u32, u32)>) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown of {}", path.display()))?;
    }
    Ok(())
}
