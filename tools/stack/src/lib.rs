//! The whole VBase backend as real processes, wired together.
//!
//! [`Stack::start`] starts (or uses `DATABASE_URL`'s) PostgreSQL, creates one database per
//! service, runs each service's `migrate`, and starts `identity-service`, `workspace-service` and
//! `webhook-gateway` from the built binaries. Without Clerk or Liveblocks credentials it runs in
//! development mode: a local RS256 key served as a stand-in Clerk issuer, a generated webhook
//! secret, and a Liveblocks stand-in that logs what would be deleted. The local stack binary and
//! the end-to-end tests both use it.

use anyhow::{Context, Result, bail};
use base64::Engine;
use ephemeral_postgres::{PgCluster, PgClusterOptions, with_database};
use serde::{Deserialize, Serialize};
use stand_ins::{ClerkApiStandIn, ClerkStandIn, LiveblocksStandIn};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use token_auth::signing::SigningKey;

pub mod clerk_events;

/// One of the three processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Which {
    Identity,
    Workspace,
    Gateway,
}

impl Which {
    /// Binary name (also the log tag).
    pub fn binary(self) -> &'static str {
        match self {
            Which::Identity => "identity-service",
            Which::Workspace => "workspace-service",
            Which::Gateway => "webhook-gateway",
        }
    }
}

/// How to start the stack.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Directory holding the three binaries.
    pub bin_dir: PathBuf,
    /// Where keys, secrets, state and logs are written.
    pub state_dir: PathBuf,
    /// Use this server instead of an ephemeral one.
    pub database_url: Option<String>,
    /// Fixed ports (identity gRPC, workspace gRPC, gateway HTTP, identity metrics, workspace
    /// metrics); `None` picks free ones.
    pub ports: Option<[u16; 5]>,
    /// Real Clerk issuer (`CLERK_JWT_ISSUER_DOMAIN`); `None` = development stand-in.
    pub clerk_issuer: Option<String>,
    /// Real webhook secret; `None` = generated.
    pub webhook_secret: Option<String>,
    /// Real Liveblocks key; `None` = development stand-in.
    pub liveblocks_secret: Option<String>,
    /// Print the services' logs tagged by service (else they go to `state_dir/logs`).
    pub echo_logs: bool,
    /// Extra environment per process.
    pub extra_env: BTreeMap<&'static str, Vec<(String, String)>>,
    /// Keep PostgreSQL's durability (fsync) on the ephemeral cluster (benchmarks).
    pub durable: bool,
    /// Run each binary through this command instead of from `bin_dir`, with `{binary}` in it
    /// replaced by the binary's name and the binary's arguments after it (e.g. `podman run
    /// --rm --network host --env-host -v STATE:STATE --entrypoint /usr/local/bin/{binary}
    /// IMAGE`, to run the stack from the container image). The process's environment must
    /// reach the binary (`--env-host`).
    pub launcher: Option<Vec<String>>,
}

impl StackConfig {
    /// Development defaults: binaries next to the current executable, state in `state_dir`.
    pub fn dev(bin_dir: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            bin_dir,
            state_dir,
            database_url: None,
            ports: None,
            clerk_issuer: None,
            webhook_secret: None,
            liveblocks_secret: None,
            echo_logs: false,
            extra_env: BTreeMap::new(),
            durable: false,
            launcher: None,
        }
    }
}

/// What the helper subcommands need to know about a running stack (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackState {
    pub gateway_url: String,
    pub identity_addr: String,
    pub workspace_addr: String,
    pub clerk_issuer: String,
    /// Present in development mode: the stand-in issuer's private key.
    pub clerk_signing_key_file: Option<PathBuf>,
    pub webhook_secret: String,
    /// The environment `webhook-gateway reconcile` needs (`vbase-stack reconcile` uses it).
    #[serde(default)]
    pub reconcile_env: Vec<(String, String)>,
    /// The operators' signing key (`mint-token --operator`).
    #[serde(default)]
    pub operator_key_file: Option<PathBuf>,
    /// The stack's own service key ([`STACK_CALLER`]; `mint-token --service`).
    #[serde(default)]
    pub service_key_file: Option<PathBuf>,
    /// The console page, once `vbase-stack up` serves it (also the sign that the stack is up).
    #[serde(default)]
    pub console_url: Option<String>,
}

/// A running stack. Dropping it kills the processes and removes the ephemeral database.
pub struct Stack {
    config: StackConfig,
    /// The stand-in Clerk issuer (development mode).
    pub clerk: Option<ClerkStandIn>,
    /// The Liveblocks stand-in (development mode).
    pub liveblocks: Option<LiveblocksStandIn>,
    /// The stand-in of Clerk's Backend API (development mode), serving [`dev_clerk_data`].
    pub clerk_api: Option<ClerkApiStandIn>,
    /// The state the helper subcommands read.
    pub state: StackState,
    /// Environment of each process.
    env: BTreeMap<Which, Vec<(String, String)>>,
    children: BTreeMap<Which, Child>,
    /// gRPC / HTTP addresses.
    pub identity_addr: SocketAddr,
    pub workspace_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    /// Database URLs of the two services.
    pub identity_db: String,
    pub workspace_db: String,
    /// Service-token signing key of the stack's own tools ([`STACK_CALLER`], granted every
    /// service method), for tests that act as an internal caller.
    pub service_key_file: PathBuf,
    /// The gateway's signing key (bound to its subject).
    pub gateway_key_file: PathBuf,
    /// The operators' signing key (bound to [`OPERATOR_SUBJECT`]): `vbase-token mint` uses it.
    pub operator_key_file: PathBuf,
    pg: Option<PgCluster>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A new `whsec_` secret (24 random bytes, as Svix generates).
pub fn generate_webhook_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

async fn ensure_database(admin_url: &str, db: &str) -> Result<()> {
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .with_context(|| "connecting to PostgreSQL".to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .await?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .await?;
    }
    Ok(())
}

/// Prints a child's output tagged by service, and appends it to its log file.
fn pipe_logs(tag: &'static str, reader: impl std::io::Read + Send + 'static, file: PathBuf) {
    std::thread::spawn(move || {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .ok();
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            println!("[{tag:>17}] {line}");
            if let Some(f) = out.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
}

impl Stack {
    /// Starts everything and waits until the services report SERVING.
    pub async fn start(config: StackConfig) -> Result<Self> {
        std::fs::create_dir_all(config.state_dir.join("logs"))?;
        for w in [Which::Identity, Which::Workspace, Which::Gateway] {
            let bin = config.bin_dir.join(w.binary());
            if config.launcher.is_none() && !bin.is_file() {
                bail!(
                    "{} not found: build the binaries first (`cargo build --workspace --bins`)",
                    bin.display()
                );
            }
        }
        // PostgreSQL: DATABASE_URL's server or an ephemeral cluster.
        let (pg, admin_url) = match &config.database_url {
            Some(url) => (None, url.clone()),
            None => {
                let options = PgClusterOptions {
                    durable: config.durable,
                    ..PgClusterOptions::default()
                };
                let c = tokio::task::spawn_blocking(move || {
                    let c = PgCluster::start(options)?;
                    c.wait_ready(Duration::from_secs(30))?;
                    Ok::<_, anyhow::Error>(c)
                })
                .await??;
                let url = c.url("postgres");
                (Some(c), url)
            }
        };
        let identity_db = with_database(&admin_url, "vbase_identity");
        let workspace_db = with_database(&admin_url, "vbase_workspace");
        ensure_database(&admin_url, "vbase_identity").await?;
        ensure_database(&admin_url, "vbase_workspace").await?;

        // Trust material.
        // One key per internal caller, each bound to its subject: the stack's own tools, the
        // gateway, and the operators (who mint with `vbase-token`).
        let mut service_keys = Vec::new();
        let mut key_file = |name: &str, subject: &str| -> Result<PathBuf> {
            let key = SigningKey::generate_ed25519()?.with_subjects(&[subject]);
            let file = config.state_dir.join(name);
            std::fs::write(&file, key.private_pem())?;
            service_keys.push(key);
            Ok(file)
        };
        let service_key_file = key_file("service-signing-key.pem", STACK_CALLER)?;
        let gateway_key_file = key_file("gateway-signing-key.pem", token_auth::GATEWAY_SUBJECT)?;
        let operator_key_file = key_file("operator-signing-key.pem", OPERATOR_SUBJECT)?;
        let service_jwks_file = config.state_dir.join("service-jwks.json");
        std::fs::write(
            &service_jwks_file,
            SigningKey::jwks(&service_keys.iter().collect::<Vec<_>>()).to_string(),
        )?;
        let (clerk, clerk_issuer, clerk_signing_key_file) = match &config.clerk_issuer {
            Some(iss) => (None, iss.clone(), None),
            None => {
                let key = SigningKey::generate_rsa()?;
                let key_file = config.state_dir.join("clerk-dev-signing-key.pem");
                std::fs::write(&key_file, key.private_pem())?;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let c = ClerkStandIn::start_on(listener, "convex", key)?;
                let iss = c.issuer();
                (Some(c), iss, Some(key_file))
            }
        };
        let webhook_secret = config
            .webhook_secret
            .clone()
            .unwrap_or_else(generate_webhook_secret);
        let (liveblocks, liveblocks_url, liveblocks_secret) = match &config.liveblocks_secret {
            Some(s) => (None, "https://api.liveblocks.io".to_owned(), s.clone()),
            None => {
                let secret = DEV_LIVEBLOCKS_SECRET.to_owned();
                let l = LiveblocksStandIn::start(&secret).await?;
                l.log_deletions(true);
                let url = l.base_url();
                (Some(l), url, secret)
            }
        };

        // Secrets reach the processes as files (`X_FILE`), as Kubernetes mounts them; each ends
        // in a newline, which the binaries trim.
        let secrets_dir = config.state_dir.join("secrets");
        std::fs::create_dir_all(&secrets_dir)?;
        let secret_file = |name: &str, value: &str| -> Result<String> {
            let path = secrets_dir.join(name);
            std::fs::write(&path, format!("{value}\n"))?;
            Ok(path.display().to_string())
        };
        let (clerk_api, clerk_api_env) = match (&clerk, env_value("CLERK_SECRET_KEY")) {
            (Some(_), None) => {
                let key = "sk_test_local_stand_in".to_owned();
                let api = ClerkApiStandIn::start(&key).await?;
                api.set_instance(DEV_CLERK_INSTANCE);
                dev_clerk_data(&api);
                let url = api.base_url();
                (
                    Some(api),
                    vec![
                        ("CLERK_API_URL".to_owned(), url),
                        (
                            "CLERK_SECRET_KEY_FILE".to_owned(),
                            secret_file("clerk-secret-key", &key)?,
                        ),
                    ],
                )
            }
            _ => (None, Vec::new()),
        };
        let [ip, wp, gp, imp, wmp] = match config.ports {
            Some(p) => p,
            None => [
                ephemeral_postgres::unused_local_port()?,
                ephemeral_postgres::unused_local_port()?,
                ephemeral_postgres::unused_local_port()?,
                ephemeral_postgres::unused_local_port()?,
                ephemeral_postgres::unused_local_port()?,
            ],
        };
        let identity_addr: SocketAddr = format!("127.0.0.1:{ip}").parse()?;
        let workspace_addr: SocketAddr = format!("127.0.0.1:{wp}").parse()?;
        let gateway_addr: SocketAddr = format!("127.0.0.1:{gp}").parse()?;
        let identity_db_file = secret_file("identity-database-url", &identity_db)?;
        let workspace_db_file = secret_file("workspace-database-url", &workspace_db)?;
        let common = |db_file: &str| -> Vec<(String, String)> {
            vec![
                ("DATABASE_URL_FILE".into(), db_file.into()),
                ("CLERK_JWT_ISSUER_DOMAIN".into(), clerk_issuer.clone()),
                (
                    "SERVICE_JWKS_FILE".into(),
                    service_jwks_file.display().to_string(),
                ),
                ("LOG_FORMAT".into(), "pretty".into()),
                // The stack's own tools (the end-to-end suite, the bench) call as this caller.
                ("SERVICE_CALLERS".into(), format!("{STACK_CALLER}=*")),
            ]
        };
        let mut env = BTreeMap::new();
        let mut identity_env = common(&identity_db_file);
        identity_env.push(("GRPC_ADDR".into(), identity_addr.to_string()));
        identity_env.push(("METRICS_ADDR".into(), format!("127.0.0.1:{imp}")));
        let mut workspace_env = common(&workspace_db_file);
        workspace_env.push(("GRPC_ADDR".into(), workspace_addr.to_string()));
        workspace_env.push(("METRICS_ADDR".into(), format!("127.0.0.1:{wmp}")));
        workspace_env.push(("LIVEBLOCKS_API_URL".into(), liveblocks_url));
        workspace_env.push((
            "LIVEBLOCKS_SECRET_KEY_FILE".into(),
            secret_file("liveblocks-secret-key", &liveblocks_secret)?,
        ));
        let gateway_env = vec![
            ("HTTP_ADDR".into(), gateway_addr.to_string()),
            (
                "CLERK_WEBHOOK_SECRET_FILE".into(),
                secret_file("clerk-webhook-secret", &webhook_secret)?,
            ),
            (
                "IDENTITY_SERVICE_URL".into(),
                format!("http://{identity_addr}"),
            ),
            (
                "WORKSPACE_SERVICE_URL".into(),
                format!("http://{workspace_addr}"),
            ),
            (
                "SERVICE_JWT_SIGNING_KEY_FILE".into(),
                gateway_key_file.display().to_string(),
            ),
            ("LOG_FORMAT".into(), "pretty".into()),
        ];
        let mut gateway_env = gateway_env;
        gateway_env.extend(clerk_api_env);
        env.insert(Which::Identity, identity_env);
        env.insert(Which::Workspace, workspace_env);
        env.insert(Which::Gateway, gateway_env);
        for (w, list) in env.iter_mut() {
            if let Some(extra) = config.extra_env.get(w.binary()) {
                list.extend(extra.iter().cloned());
            }
        }

        let state = StackState {
            gateway_url: format!("http://{gateway_addr}"),
            identity_addr: identity_addr.to_string(),
            workspace_addr: workspace_addr.to_string(),
            clerk_issuer,
            clerk_signing_key_file,
            webhook_secret,
            // The gateway's settings less its serving ones.
            reconcile_env: env[&Which::Gateway]
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "HTTP_ADDR" | "CLERK_WEBHOOK_SECRET_FILE"))
                .cloned()
                .collect(),
            operator_key_file: Some(operator_key_file.clone()),
            service_key_file: Some(service_key_file.clone()),
            console_url: None,
        };
        std::fs::write(
            config.state_dir.join("state.json"),
            serde_json::to_string_pretty(&state)?,
        )?;
        let mut stack = Stack {
            config,
            clerk,
            liveblocks,
            clerk_api,
            state,
            env,
            children: BTreeMap::new(),
            identity_addr,
            workspace_addr,
            gateway_addr,
            identity_db,
            workspace_db,
            service_key_file,
            gateway_key_file,
            operator_key_file,
            pg,
        };
        for w in [Which::Identity, Which::Workspace] {
            stack.migrate(w)?;
        }
        for w in [Which::Identity, Which::Workspace, Which::Gateway] {
            stack.spawn(w)?;
        }
        stack.wait_ready(Duration::from_secs(60)).await?;
        Ok(stack)
    }

    /// Where the stack runs `w`'s binary from (also for one-off subcommands such as `migrate`).
    pub fn binary_path(&self, w: Which) -> PathBuf {
        self.config.bin_dir.join(w.binary())
    }

    /// `webhook-gateway reconcile` against this stack (and, in development mode, the stand-in
    /// of Clerk's Backend API); add its options.
    pub fn reconcile_command(&self) -> Command {
        self.gateway_command("reconcile")
    }

    /// `vbase-token` as an operator runs it on a workstation: none of the gateway's settings;
    /// the operators' key is [`Stack::operator_key_file`]. Add its subcommand and options.
    pub fn token_command(&self) -> Command {
        Command::new(self.config.bin_dir.join("vbase-token"))
    }

    /// A `webhook-gateway` subcommand (`replay-quarantined`, `reconcile`, ...) with the
    /// gateway's settings of this stack; add its options.
    pub fn gateway_command(&self, subcommand: &str) -> Command {
        let mut c = self.command(Which::Gateway);
        c.arg(subcommand);
        c
    }

    fn command(&self, w: Which) -> Command {
        let mut cmd = match self.config.launcher.as_deref() {
            Some([program, args @ ..]) => {
                let mut c = Command::new(program);
                c.args(args.iter().map(|a| a.replace("{binary}", w.binary())));
                c
            }
            _ => Command::new(self.binary_path(w)),
        };
        cmd.envs(self.env[&w].iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // A secret given as a file must not also come from this process's environment.
        for (k, _) in &self.env[&w] {
            if let Some(plain) = k.strip_suffix("_FILE")
                && !self.env[&w].iter().any(|(name, _)| name == plain)
            {
                cmd.env_remove(plain);
            }
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        // Own process group: Ctrl-C reaches the stack, which then stops the services in order.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd
    }

    fn migrate(&self, w: Which) -> Result<()> {
        let out = self
            .command(w)
            .arg("migrate")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "{} migrate failed: {}",
                w.binary(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts (or restarts) one process.
    pub fn spawn(&mut self, w: Which) -> Result<()> {
        let log = self
            .config
            .state_dir
            .join("logs")
            .join(format!("{}.log", w.binary()));
        let mut cmd = self.command(w);
        cmd.stdin(Stdio::null());
        if self.config.echo_logs {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else {
            // The process appends to its log file itself: no relay in this process (the bench
            // would otherwise count a copy of every log line as load-generator CPU).
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("opening {}", log.display()))?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", w.binary()))?;
        if let Some(o) = child.stdout.take() {
            pipe_logs(w.binary(), o, log.clone());
        }
        if let Some(e) = child.stderr.take() {
            pipe_logs(w.binary(), e, log);
        }
        self.children.insert(w, child);
        Ok(())
    }

    /// Process id of a running process.
    pub fn pid(&self, w: Which) -> Option<u32> {
        self.children.get(&w).map(Child::id)
    }

    /// Prometheus endpoint of a service (`None` for the gateway, which serves `/metrics` on
    /// its HTTP address).
    pub fn metrics_url(&self, w: Which) -> Option<String> {
        let addr = self
            .env
            .get(&w)?
            .iter()
            .find(|(k, _)| k == "METRICS_ADDR")?;
        Some(format!("http://{}/metrics", addr.1))
    }

    /// Admin URL of the PostgreSQL server in use.
    pub fn admin_db(&self) -> String {
        with_database(&self.identity_db, "postgres")
    }

    /// Kills one process at once (SIGKILL: a crash, no drain).
    pub fn kill(&mut self, w: Which) {
        if let Some(mut c) = self.children.remove(&w) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks one process to stop (SIGTERM) and waits for it to exit (SIGKILL after 30 s),
    /// without blocking the async runtime (clients in this process must be able to answer the
    /// server's shutdown handshake).
    pub async fn terminate(&mut self, w: Which) -> Result<std::process::ExitStatus> {
        let mut c = self.children.remove(&w).context("not running")?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                let _ = c.kill();
                return Ok(c.wait()?);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until both services are SERVING and the gateway answers `/healthz`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let http = reqwest::Client::new();
        loop {
            let a = serving(self.identity_addr, "vbase.identity.v1.IdentityService").await;
            let b = serving(self.workspace_addr, "vbase.workspace.v1.WorkspaceService").await;
            let c = http
                .get(format!("{}/readyz", self.state.gateway_url))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if a && b && c {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "stack not ready after {timeout:?} (identity {a}, workspace {b}, gateway {c}); logs in {}",
                    self.config.state_dir.join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the gateway first, then the services (SIGTERM, drained), then PostgreSQL. Fails
    /// naming each process that did not exit with status 0 (a drain that failed or timed out).
    pub async fn stop(mut self) -> Result<()> {
        let mut failed = Vec::new();
        for w in [Which::Gateway, Which::Workspace, Which::Identity] {
            if !self.children.contains_key(&w) {
                continue;
            }
            match self.terminate(w).await {
                Ok(status) if status.success() => {}
                Ok(status) => failed.push(format!("{} exited with {status}", w.binary())),
                Err(e) => failed.push(format!("{}: {e}", w.binary())),
            }
        }
        drop(self.pg.take());
        if !failed.is_empty() {
            bail!("stopping the stack: {}", failed.join("; "));
        }
        Ok(())
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }
}

impl Drop for Stack {
    /// Best effort when [`Stack::stop`] was not called (e.g. a failed test): kill at once.
    fn drop(&mut self) {
        for w in [Which::Gateway, Which::Workspace, Which::Identity] {
            self.kill(w);
        }
        drop(self.pg.take());
    }
}

async fn serving(addr: SocketAddr, service: &str) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let Ok(ch) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .map(|e| e.connect_timeout(Duration::from_millis(500)))
    else {
        return false;
    };
    let Ok(ch) = ch.connect().await else {
        return false;
    };
    let mut c = HealthClient::new(ch);
    matches!(
        c.check(HealthCheckRequest { service: service.into() }).await,
        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

/// Claims of a development user token (the seed's `convex` JWT template plus org claims).
/// The `sub` of service tokens the stack's own tools mint with the gateway's key (granted
/// every service method in the stack's `SERVICE_CALLERS`).
pub const STACK_CALLER: &str = "vbase-stack";

/// The Clerk instance of the development stack: its stand-in of Clerk's Backend API answers
/// for it, and `send-sample` webhooks come from it.
pub const DEV_CLERK_INSTANCE: &str = "ins_local";

/// The operators' subject in the stack (the services' default `OPERATOR_SUBJECTS`).
pub const OPERATOR_SUBJECT: &str = "operator";

/// The secret key the local stack's Liveblocks stand-in accepts.
pub const DEV_LIVEBLOCKS_SECRET: &str = "sk_dev_local_stand_in";

/// What the development stack's stand-in of Clerk's Backend API holds: the users and the
/// organization that `vbase-stack mint-token` makes tokens for by default.
pub fn dev_clerk_data(api: &ClerkApiStandIn) {
    let t = 1_764_000_000_000;
    for (i, (id, first)) in [
        ("user_local", "Local"),
        ("user_alice", "Alice"),
        ("user_bob", "Bob"),
    ]
    .into_iter()
    .enumerate()
    {
        let at = t + i as i64;
        api.put_user(stand_ins::user_json(
            id,
            first,
            &format!("{id}@example.com"),
            at,
            at,
        ));
    }
    api.put_org(stand_ins::org_json(
        "org_local",
        "Local Workspace",
        "user_local",
        t,
        t,
    ));
    for (i, (user, role)) in [("user_local", "org:admin"), ("user_alice", "org:member")]
        .into_iter()
        .enumerate()
    {
        let at = t + i as i64;
        api.put_membership(stand_ins::membership_json(
            &format!("orgmem_local{i}"),
            "org_local",
            user,
            role,
            at,
            at,
        ));
    }
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

pub fn dev_user_claims(
    state: &StackState,
    user: &str,
    org: Option<&str>,
    role: &str,
    name: &str,
    email: &str,
) -> serde_json::Value {
    let now = token_auth::signing::now_secs();
    serde_json::json!({
        "iss": state.clerk_issuer, "sub": user, "aud": "convex",
        "iat": now, "nbf": now - 5, "exp": now + 3600,
        "name": name, "email": email,
        "org_id": org, "org_role": org.map(|_| role), "org_slug": org,
    })
}

/// Signs a Clerk-like webhook body with `secret`; returns the three Svix headers.
pub fn sign_webhook(secret: &str, id: &str, body: &[u8]) -> Result<[(&'static str, String); 3]> {
    let ts = token_auth::signing::now_secs();
    let sig = svix::webhooks::Webhook::new(secret)
        .map_err(|e| anyhow::anyhow!("bad webhook secret: {e:?}"))?
        .sign(id, ts, body)
        .map_err(|e| anyhow::anyhow!("signing failed: {e:?}"))?;
    Ok([
        ("svix-id", id.to_owned()),
        ("svix-timestamp", ts.to_string()),
        ("svix-signature", sig),
    ])
}

/// A sample `user.created` event, shaped like Clerk's.
pub fn sample_user_created(user: &str, first: &str, email: &str) -> serde_json::Value {
    let now_ms = token_auth::signing::now_secs() * 1000;
    serde_json::json!({
        "data": {"id": user, "object": "user", "first_name": first, "last_name": "Example", "username": null,
                 "primary_email_address_id": "idn_1", "image_url": "https://img.clerk.com/example",
                 "email_addresses": [{"id": "idn_1", "email_address": email, "object": "email_address", "linked_to": []}],
                 "created_at": now_ms, "updated_at": now_ms},
        "object": "event", "type": "user.created", "timestamp": now_ms, "instance_id": DEV_CLERK_INSTANCE,
        "event_attributes": {"http_request": {"client_ip": "127.0.0.1", "user_agent": "vbase-stack"}}
    })
}
