//! Starting, stopping and cleaning up one PostgreSQL cluster.

use anyhow::{Context, Result, anyhow, bail};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How the cluster is tuned.
#[derive(Debug, Clone, Copy)]
pub struct PgClusterOptions {
    /// Keep PostgreSQL's durability (fsync, synchronous commit). Off is faster and fine for tests;
    /// benchmarks keep it on.
    pub durable: bool,
    /// `max_connections`.
    pub max_connections: u32,
    /// Commits wait until a streaming standby has the WAL (`synchronous_standby_names = '*'`,
    /// `synchronous_commit = on`, also when not `durable`): a promoted standby then holds every
    /// commit a client saw succeed. Until a standby connects, commits wait.
    pub synchronous_standby: bool,
    /// Take TCP connections over TLS alone (`ssl = on`, `hostssl` in pg_hba.conf): the server's
    /// certificate, for 127.0.0.1 and localhost, is signed by a CA made for this cluster, whose
    /// certificate is [`PgCluster::ca_file`].
    pub tls: bool,
}

impl Default for PgClusterOptions {
    fn default() -> Self {
        Self {
            durable: false,
            max_connections: 300,
            synchronous_standby: false,
            tls: false,
        }
    }
}

/// A running cluster. Dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    options_line: String,
    ca_file: Option<PathBuf>,
    watchdog: Option<(Child, ChildStdin)>,
}

/// Finds the directory holding `initdb` and `pg_ctl`: PATH first, then the newest
/// `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                // The installation's own directory when these are links into it: the other
                // programs (pg_basebackup) are there.
                let real = std::fs::canonicalize(dir.join("pg_ctl"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| d.join("pg_basebackup").is_file());
                return Ok(real.unwrap_or(dir));
            }
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, b)| b).ok_or_else(|| {
        anyhow!("PostgreSQL binaries not found: put initdb/pg_ctl on PATH or install them under /usr/lib/postgresql/<version>/bin")
    })
}

/// uid/gid of the `postgres` account when we run as root (PostgreSQL refuses root).
pub(crate) fn unprivileged_account() -> Result<Option<(u32, u32)>> {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            return Ok(Some((f[2].parse()?, f[3].parse()?)));
        }
    }
    bail!(
        "running as root and no `postgres` account exists to run PostgreSQL as (create one with `useradd postgres`)"
    )
}

/// The durability and replication settings `options` ask for, as `postgres` options (run
/// through `/bin/sh` by `pg_ctl`, hence the quotes).
fn settings_line(options: PgClusterOptions) -> String {
    let mut line = String::new();
    if !options.durable {
        line.push_str(" -c fsync=off -c full_page_writes=off");
    }
    if options.tls {
        line.push_str(" -c ssl=on");
    }
    if options.synchronous_standby {
        line.push_str(" -c synchronous_commit=on -c synchronous_standby_names='*'");
    } else if !options.durable {
        line.push_str(" -c synchronous_commit=off");
    }
    line
}

impl PgCluster {
    /// Creates and starts a new cluster.
    pub fn start(options: PgClusterOptions) -> Result<Self> {
        let bin = find_bin_dir()?;
        let run_as = unprivileged_account()?;
        let dir = tempfile::Builder::new()
            .prefix("vbase-pg-")
            .tempdir()
            .context("creating a temp dir for PostgreSQL")?
            .keep();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .context("chown of the data dir")?;
        }
        let mut cluster = Self {
            bin,
            dir,
            port: 0,
            run_as,
            options_line: String::new(),
            ca_file: None,
            watchdog: None,
        };
        // Start the watchdog first: from here on, files are removed whatever happens.
        cluster.spawn_watchdog()?;
        cluster.initdb()?;
        if options.tls {
            let ca_file = cluster.dir.join("ca.crt");
            crate::tls::write_files(&cluster.data_dir(), &ca_file, run_as)?;
            cluster.ca_file = Some(ca_file);
        }
        cluster.start_on_a_free_port(options)?;
        Ok(cluster)
    }

    /// Creates and starts a hot standby of `primary`: a copy taken with `pg_basebackup -R`
    /// (which writes `primary_conninfo` and `standby.signal`), streaming the primary's WAL,
    /// read-only until [`PgCluster::promote`].
    pub fn start_standby(primary: &PgCluster, options: PgClusterOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("vbase-pg-standby-")
            .tempdir()
            .context("creating a temp dir for the standby")?
            .keep();
        if let Some((uid, gid)) = primary.run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .context("chown of the standby's dir")?;
        }
        let mut cluster = Self {
            bin: primary.bin.clone(),
            dir,
            port: 0,
            run_as: primary.run_as,
            options_line: String::new(),
            ca_file: None,
            watchdog: None,
        };
        cluster.spawn_watchdog()?;
        let out = cluster
            .command(&cluster.bin.join("pg_basebackup"))
            .arg("-D")
            .arg(cluster.data_dir())
            .args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-h",
                "127.0.0.1",
            ])
            .args(["-p", &primary.port.to_string(), "-U", "postgres"])
            .stdin(Stdio::null())
            .output()
            .context("running pg_basebackup")?;
        if !out.status.success() {
            bail!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.start_on_a_free_port(options)?;
        Ok(cluster)
    }

    /// Starts a primary with `options` and `standbys` hot standbys of it, each accepting
    /// connections before this returns.
    pub fn start_with_standbys(
        options: PgClusterOptions,
        standbys: usize,
    ) -> Result<(Self, Vec<Self>)> {
        let primary = Self::start(options)?;
        primary.wait_ready(Duration::from_secs(30))?;
        let standbys = (0..standbys)
            .map(|_| {
                let s = Self::start_standby(&primary, PgClusterOptions::default())?;
                s.wait_ready(Duration::from_secs(30))?;
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((primary, standbys))
    }

    /// A primary whose commits wait for its one streaming standby (`synchronous_standby`),
    /// both accepting connections, started off the async threads: (primary, standby).
    pub async fn synchronous_pair() -> Result<(Self, Self)> {
        tokio::task::spawn_blocking(|| {
            let options = PgClusterOptions {
                synchronous_standby: true,
                ..PgClusterOptions::default()
            };
            let (primary, mut standbys) = Self::start_with_standbys(options, 1)?;
            Ok((primary, standbys.remove(0)))
        })
        .await?
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) -> Result<()> {
        let out = self
            .command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "30", "promote"])
            .stdin(Stdio::null())
            .output()
            .context("running pg_ctl promote")?;
        if !out.status.success() {
            bail!(
                "pg_ctl promote failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Picks a port and starts the server with `options`, trying again on another port when
    /// the chosen one was taken meanwhile.
    fn start_on_a_free_port(&mut self, options: PgClusterOptions) -> Result<()> {
        let mut last_err = None;
        for _ in 0..5 {
            self.port = crate::unused_local_port()?;
            // Extra server settings for a profiling run, e.g.
            // `-c shared_preload_libraries=pg_stat_statements`.
            let extra = std::env::var("EPHEMERAL_PG_OPTIONS").unwrap_or_default();
            self.options_line = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections={}{} {extra}",
                self.port,
                self.dir.display(),
                options.max_connections,
                settings_line(options)
            );
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("PostgreSQL did not start")))
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        // Own process group: a Ctrl-C meant for the parent must not kill the server or the
        // watchdog before they clean up.
        cmd.process_group(0);
        cmd.env_remove("PGDATA");
        cmd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn spawn_watchdog(&mut self) -> Result<()> {
        let script = r#"cat >/dev/null; "$1/pg_ctl" -D "$2/data" -m immediate -w stop >/dev/null 2>&1; rm -rf "$2""#;
        let mut child = self
            .command(Path::new("/bin/sh"))
            .args(["-c", script, "sh"])
            .arg(&self.bin)
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the PostgreSQL watchdog")?;
        let stdin = child.stdin.take().context("watchdog stdin")?;
        self.watchdog = Some((child, stdin));
        Ok(())
    }

    fn initdb(&self) -> Result<()> {
        let out = self
            .command(&self.bin.join("initdb"))
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "--no-sync",
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdin(Stdio::null())
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let out = self
            .command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "30", "-o", &self.options_line, "start"])
            .stdin(Stdio::null())
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
            bail!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// Stops the server (fast shutdown), keeping its files; [`PgCluster::resume`] starts it again.
    pub fn pause(&self) -> Result<()> {
        self.stop("fast")
    }

    /// Stops the server the way a crash would (immediate shutdown: no checkpoint, and WAL not
    /// yet written out is lost); [`PgCluster::resume`] starts it again, through crash recovery.
    pub fn crash(&self) -> Result<()> {
        self.stop("immediate")
    }

    /// `pg_ctl stop` in shutdown mode `mode`, waiting for it.
    fn stop(&self, mode: &str) -> Result<()> {
        let out = self
            .command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "stop"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop -m {mode} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts a paused server again on the same port.
    pub fn resume(&self) -> Result<()> {
        self.pg_ctl_start()
    }

    /// The directory holding the cluster's files (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate (PEM) of the CA that signed the server's, for a cluster started with
    /// [`PgClusterOptions::tls`].
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db` as the `postgres` superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Waits until a connection succeeds, up to `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL on port {} not reachable", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some((mut child, mut stdin)) = self.watchdog.take() {
            let _ = stdin.flush();
            drop(stdin); // EOF: the watchdog stops the server and removes the directory
            let _ = child.wait();
        }
    }
}
