//! The load generator and what every row shares: bounded concurrent calls with their latencies,
//! direct PostgreSQL connections, the settling of tables before a timed phase, and the rows'
//! context (the running stack, the scale, the identity-db baseline connections).

use anyhow::{Context, Result};
use futures::future::join_all;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use token_auth::signing::{ServiceTokenMinter, SigningKey, now_secs};
use tonic::transport::Channel;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;
use vbase_stack::Stack;

/// Counts of a run: small in `--smoke`.
pub struct Scale {
    pub ingest: usize,
    /// Calls in each phase of the `reads` and `workspace-read` rows.
    pub reads: usize,
    /// Calls in each phase of the `message-reads` row.
    pub message_reads: usize,
    pub verifies: usize,
    pub messages_per_channel: usize,
    /// Messages the messages row posts (and its baseline writes).
    pub messages: usize,
    pub items_per_room: usize,
    pub rooms: usize,
}

/// What every row runs against.
pub struct Bench<'a> {
    pub stack: &'a Stack,
    pub scale: Scale,
    /// Concurrent clients for the request rows.
    pub concurrency: usize,
    pub smoke: bool,
    /// HTTP/2 connections the gRPC read rows multiplex their calls over.
    pub grpc_connections: Option<usize>,
    /// Users the ingest row writes and the reads row reads.
    pub users: usize,
    /// Rooms the Liveblocks row cleans up.
    pub rooms_to_clean: i32,
    /// One baseline connection per concurrent client to identity-service's database.
    pub conns: Vec<Direct>,
    /// workspace-service's database.
    pub wdb: Arc<tokio_postgres::Client>,
    /// The services' read caches are off (`--caches off`): every read is a miss.
    pub cold: bool,
}

#[derive(Default)]
pub struct Stats {
    pub elapsed: Duration,
    pub latencies_ms: Vec<f64>,
    pub errors: usize,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.elapsed.as_secs_f64()
    }
    pub fn pct(&self, p: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    }
}

/// Runs `total` calls of `f` over `states.len()` concurrent workers; bounded by count.
pub async fn load<S, F, Fut>(states: Vec<S>, total: usize, f: F) -> Stats
where
    S: Clone + Send + 'static,
    F: Fn(S, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let errors = Arc::new(AtomicUsize::new(0));
    // Phase markers on stderr with the wall clock, for profiles cut to one phase (`perf record
    // -k realtime`, then `perf report --time`).
    eprintln!("load: {total} calls starting at {:.6}", wall_clock());
    let started = Instant::now();
    let workers = states.into_iter().map(|s| {
        let (next, lat, errors, f) = (next.clone(), lat.clone(), errors.clone(), f.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let t = Instant::now();
                let ok = f(s.clone(), i).await;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                if ok {
                    lat.lock().unwrap().push(ms);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    });
    join_all(workers).await;
    let elapsed = started.elapsed();
    eprintln!("load: {total} calls done at {:.6}", wall_clock());
    let latencies_ms = Arc::try_unwrap(lat)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_default();
    Stats {
        elapsed,
        latencies_ms,
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Seconds since the Unix epoch.
fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Brings freshly loaded tables to a steady state before a timed delete, the same for both
/// sides: vacuumed (hint bits set), analysed, and no checkpoint owed for the load.
pub async fn settle(db: &tokio_postgres::Client) -> Result<()> {
    db.batch_execute("VACUUM ANALYZE").await?;
    db.batch_execute("CHECKPOINT").await?;
    Ok(())
}

pub async fn pg(url: &str) -> Result<Arc<tokio_postgres::Client>> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(Arc::new(c))
}

/// Polls `count` (a `SELECT count(*)`) every `poll` until it is 0 (600 s at most).
pub async fn until_empty(db: &tokio_postgres::Client, count: &str, poll: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        let left: i64 = db.query_one(count, &[]).await?.get(0);
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "not done after 600 s: {count} = {left}"
        );
        tokio::time::sleep(poll).await;
    }
}

/// The development stack's Clerk signing key (user tokens) and a minter of the stack's own
/// service tokens (granted every method).
pub fn stack_signers(stack: &Stack) -> Result<(SigningKey, ServiceTokenMinter)> {
    let key = SigningKey::from_pem(&std::fs::read_to_string(
        stack
            .state
            .clerk_signing_key_file
            .as_ref()
            .context("dev issuer key")?,
    )?)?;
    let minter = ServiceTokenMinter::new(
        SigningKey::from_pem(&std::fs::read_to_string(&stack.service_key_file)?)?,
        "vbase-internal",
        vbase_stack::STACK_CALLER,
        Duration::from_secs(600),
    );
    Ok((key, minter))
}

/// Creates the workspace of `org` through the sync command (the stack's service `token`).
pub async fn bench_workspace(
    wsc: &mut WorkspaceServiceClient<Channel>,
    token: &str,
    org: &str,
    name: &str,
) -> Result<()> {
    wsc.upsert_workspace(service_harness::bearer(
        wsp::UpsertWorkspaceCommand {
            event_id: format!("bench-{org}"),
            occurred_at: service_harness::ts(now_secs() - 60),
            clerk_org_id: org.into(),
            name: name.into(),
            ..Default::default()
        },
        token,
    ))
    .await?;
    Ok(())
}

/// Makes users `{prefix}0` .. `{prefix}{count - 1}` members (`org:member`) of the workspace of
/// `org`.
pub async fn bench_members(
    wsc: &mut WorkspaceServiceClient<Channel>,
    token: &str,
    org: &str,
    prefix: &str,
    count: usize,
) -> Result<()> {
    for u in 0..count {
        wsc.upsert_membership(service_harness::bearer(
            wsp::UpsertMembershipCommand {
                event_id: format!("bench-{org}-m{u}"),
                occurred_at: service_harness::ts(now_secs() - 60),
                clerk_org_id: org.into(),
                clerk_user_id: format!("{prefix}{u}"),
                role: "org:member".into(),
                ..Default::default()
            },
            token,
        ))
        .await?;
    }
    Ok(())
}

/// Deletes the workspace of `org` and waits for its purge: the rows that count the workspace
/// tables find nothing left behind.
pub async fn drop_bench_workspace(
    wsc: &mut WorkspaceServiceClient<Channel>,
    token: &str,
    wdb: &tokio_postgres::Client,
    org: &str,
) -> Result<()> {
    wsc.delete_workspace(service_harness::bearer(
        wsp::DeleteWorkspaceCommand {
            event_id: format!("bench-{org}-delete"),
            occurred_at: None,
            clerk_org_id: org.into(),
            ..Default::default()
        },
        token,
    ))
    .await?;
    until_empty(
        wdb,
        "SELECT count(*) FROM purge_jobs",
        Duration::from_millis(5),
    )
    .await
}

/// A baseline client: one connection with its statements prepared once, as a service's pool
/// keeps them (no parse or plan round trip per call).
#[derive(Clone)]
pub struct Direct {
    pub db: Arc<tokio_postgres::Client>,
    pub upsert: tokio_postgres::Statement,
    pub select: tokio_postgres::Statement,
}

impl Direct {
    pub async fn connect(url: &str) -> Result<Self> {
        let db = pg(url).await?;
        let upsert = db
            .prepare(
                "INSERT INTO users (clerk_id, name, email, image_url, source_updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (clerk_id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email, image_url = EXCLUDED.image_url,
                   source_updated_at = EXCLUDED.source_updated_at, updated_at = now()
                 WHERE users.source_updated_at IS NULL OR users.source_updated_at < EXCLUDED.source_updated_at",
            )
            .await?;
        let select = db
            .prepare(
                "SELECT clerk_id, name, email, image_url, source_updated_at, claims_seen_at, deleted_at, created_at, updated_at
                 FROM users WHERE clerk_id = $1",
            )
            .await?;
        Ok(Self { db, upsert, select })
    }
}
