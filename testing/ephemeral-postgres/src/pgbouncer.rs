//! PgBouncer in front of a [`PgCluster`], for tests of the services behind a pooler.

use crate::PgCluster;
use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How PgBouncer hands out server connections (its `pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BouncerMode {
    /// A client keeps one server connection for its whole session.
    Session,
    /// A client holds a server connection only for the length of a transaction. The services'
    /// prepared statements need PgBouncer 1.21 here; nothing tests this mode on Debian 12's 1.18.
    Transaction,
}

/// A running `pgbouncer`; dropping it stops it and deletes its files.
#[derive(Debug)]
pub struct PgBouncer {
    child: Child,
    /// Closing it stops the server (see [`PgBouncer::start_on`]).
    stdin: Option<ChildStdin>,
    dir: PathBuf,
    port: u16,
}

impl PgBouncer {
    /// Starts the machine's `pgbouncer` (on PATH, or `/usr/sbin`) in `mode` in front of
    /// `cluster`: every database name reaches the cluster's database of that name, as user
    /// `postgres` without a password (the cluster trusts local connections). The admin console
    /// is database `pgbouncer`, for user `postgres`.
    pub fn start(cluster: &PgCluster, mode: BouncerMode) -> Result<Self> {
        let mut last_err = None;
        for _ in 0..5 {
            match Self::start_on(crate::unused_local_port()?, cluster, mode) {
                Ok(b) => return Ok(b),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("pgbouncer did not start")))
    }

    /// Starts it on `port`. It runs under a shell that stops it and deletes its directory when
    /// our end of the shell's stdin closes: when this value is dropped, or when the test
    /// process dies in any way.
    fn start_on(port: u16, cluster: &PgCluster, mode: BouncerMode) -> Result<Self> {
        let program = Self::program()?;
        let run_as = crate::cluster::unprivileged_account()?;
        let dir = tempfile::Builder::new()
            .prefix("vbase-pgbouncer-")
            .tempdir()
            .context("creating a temp dir for PgBouncer")?
            .keep();
        let mode = match mode {
            BouncerMode::Session => "session",
            BouncerMode::Transaction => "transaction",
        };
        // Only the superuser the test clusters trust: the stacks behind it connect as it.
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n")?;
        let config = format!(
            "[databases]\n* = host=127.0.0.1 port={upstream}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/users.txt\nadmin_users = postgres\n\
             pool_mode = {mode}\nmax_client_conn = 1000\ndefault_pool_size = 100\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {dir}/pgbouncer.log\n",
            upstream = cluster.port(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), config)?;
        // A background list's stdin is /dev/null unless redirected: the watcher reads fd 3.
        let script = r#"exec 3<&0
"$1" "$2/pgbouncer.ini" </dev/null 3<&- & pid=$!
( cat <&3 >/dev/null; kill $pid 2>/dev/null; sleep 1; rm -rf "$2" ) &
wait $pid"#;
        let mut cmd = Command::new("/bin/sh");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd
            .args(["-c", script, "sh"])
            .arg(&program)
            .arg(&dir)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pgbouncer")?;
        let stdin = child.stdin.take();
        let mut bouncer = Self {
            child,
            stdin,
            dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = bouncer.child.try_wait()? {
                bail!("pgbouncer exited ({status}): {}", bouncer.log_tail());
            }
            if Instant::now() > deadline {
                bail!("pgbouncer not listening after 10 s: {}", bouncer.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(bouncer)
    }

    /// The `pgbouncer` program, if this machine has one.
    pub fn program() -> Result<PathBuf> {
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("pgbouncer"));
        on_path
            .chain([PathBuf::from("/usr/sbin/pgbouncer")])
            .find(|p| p.is_file())
            .context("pgbouncer not found (Debian: apt-get install pgbouncer)")
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db` through the pooler.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
        log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
