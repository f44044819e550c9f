//! TLS for every connection the services make to PostgreSQL: the pools, migrations, the stored
//! role settings and the LISTEN sessions. Each URL's `sslmode` says whether TLS is used
//! (tokio-postgres knows `disable`, `prefer`, its default, and `require`; not libpq's
//! `verify-ca` or `verify-full`). Whenever TLS is used the server's certificate and host name are
//! verified against the system's roots and DB_CA_FILE's certificates, so `require` here is
//! libpq's `verify-full`, and a server that is not trusted is refused, never used unverified.

use anyhow::Context;
use diesel_async::AsyncPgConnection;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use tokio_postgres::Socket;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

/// rustls's handshake of one connection (a type its crate does not name).
type RustlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
/// A connection's TLS stream.
type RustlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// Makes the TLS session of each new connection to PostgreSQL: a `tokio_postgres` connector
/// (`MakeTlsConnect`) that verifies the server. Made once per process, since it holds the
/// trusted roots; its clones share them.
#[derive(Clone)]
pub struct DbTls(MakeRustlsConnect);

impl std::fmt::Debug for DbTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbTls")
    }
}

impl DbTls {
    /// Trusts the system's roots and, when given, every certificate in `ca_file` (PEM, the
    /// setting DB_CA_FILE): fails when the file cannot be read or holds no usable certificate.
    pub fn new(ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let mut roots = system_roots();
        if let Some(path) = ca_file {
            roots.roots.extend(ca_file_roots(path)?.roots);
        }
        Ok(Self::trusting(roots))
    }

    /// The process's connector that trusts the system's roots alone: for tests and tools.
    pub fn system_roots() -> Self {
        static SYSTEM: OnceLock<DbTls> = OnceLock::new();
        SYSTEM
            .get_or_init(|| Self::trusting(system_roots()))
            .clone()
    }

    /// A connector verifying servers against `roots`, on the aws-lc-rs provider (the one
    /// rustls already uses in this process through reqwest).
    fn trusting(roots: rustls::RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports rustls's default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self(MakeRustlsConnect::new(config))
    }

    /// A diesel-async connection to `url`, with TLS as its `sslmode` asks (diesel-async's own
    /// `establish` never uses TLS). The error names neither the URL nor its password.
    pub async fn establish(&self, url: &str) -> diesel::ConnectionResult<AsyncPgConnection> {
        let (client, connection) = tokio_postgres::connect(url, self.clone())
            .await
            .map_err(|e| diesel::ConnectionError::BadConnection(with_causes(&e)))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }
}

impl MakeTlsConnect<Socket> for DbTls {
    type Stream = RustlsStream;
    type TlsConnect = DbTlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<DbTlsConnect, Self::Error> {
        MakeTlsConnect::<Socket>::make_tls_connect(&mut self.0, host).map(DbTlsConnect)
    }
}

/// The TLS handshake of one connection: rustls's, verifying the certificate and host name,
/// with an untrusted server said plainly.
pub struct DbTlsConnect(RustlsConnect);

impl TlsConnect<Socket> for DbTlsConnect {
    type Stream = RustlsStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        let handshake = self.0.connect(socket);
        Box::pin(async move { handshake.await.map_err(untrusted_said_plainly) })
    }
}

/// `e` and its causes in one line: tokio-postgres's own text says only what failed ("error
/// performing TLS handshake", "db error"), its causes say why.
pub(crate) fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A handshake's error, reworded when the server's certificate is what failed (rustls alone
/// says `invalid peer certificate: UnknownIssuer`): that it is not trusted, and what to do.
fn untrusted_said_plainly(e: std::io::Error) -> std::io::Error {
    match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(why)) => std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the database server's certificate is not trusted ({why}): it must be signed by a system root or by a CA in DB_CA_FILE, and name the host the URL connects to (a URL without sslmode uses TLS whenever the server offers it; sslmode=disable turns it off, for a server on the same host only)"
            ),
        ),
        _ => e,
    }
}

/// The system's trusted roots (`SSL_CERT_FILE` or `SSL_CERT_DIR` when set, else the
/// distribution's bundle). None found is no error: TLS connections then trust DB_CA_FILE's
/// certificates alone, and fail without them.
fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "reading the system's CA certificates");
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        tracing::warn!(
            "no system CA certificates found: TLS connections to PostgreSQL trust DB_CA_FILE alone"
        );
    }
    roots
}

/// The certificates of the PEM file `path` (DB_CA_FILE) as trusted roots: an error naming the
/// setting when the file cannot be read or holds no usable certificate. Also the configuration
/// check at start (`DatabaseArgs::check`).
pub(crate) fn ca_file_roots(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let pem = std::fs::read(path)
        .with_context(|| format!("DB_CA_FILE ({}) cannot be read", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("DB_CA_FILE ({}) is not valid PEM", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    anyhow::ensure!(
        added > 0,
        "DB_CA_FILE ({}) holds no usable PEM certificate (BEGIN CERTIFICATE)",
        path.display()
    );
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_cannot_be_read_is_named() {
        let e = DbTls::new(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            format!("{e:#}").contains("DB_CA_FILE (/nonexistent/ca.pem) cannot be read"),
            "{e:#}"
        );
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_named() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "not a certificate\n").unwrap();
        let e = DbTls::new(Some(file.path())).unwrap_err();
        assert!(
            format!("{e:#}").contains("holds no usable PEM certificate"),
            "{e:#}"
        );
    }
}
