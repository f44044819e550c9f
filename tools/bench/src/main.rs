//! `vbase-bench [--smoke] [--write docs/benchmarks.md]`: measures the real stack against a
//! baseline measured in the same run on the same machine, and prints ratios.
//!
//! Starts the three release binaries on an ephemeral PostgreSQL with durability on (fsync),
//! drives them with a bounded built-in load generator, and compares each figure with the
//! physical limit next to it: the same SQL sent straight to PostgreSQL, the bare signature check,
//! a raw `ON DELETE CASCADE`, the configured Liveblocks concurrency over the stand-in's latency.

use anyhow::{Context, Result};
use clap::Parser;
use futures::future::join_all;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use stand_ins::{JwksServer, LiveblocksMode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use token_auth::signing::{ServiceTokenMinter, SigningKey, now_secs};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use vbase_proto::identity::v1 as idp;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;
use vbase_stack::{Stack, StackConfig, Which, dev_user_claims, sign_webhook};

mod reconcile;

#[derive(Parser)]
#[command(about = "Benchmarks of the VBase stack against same-run baselines")]
struct Args {
    /// Small counts: checks the bench still runs (CI).
    #[arg(long)]
    smoke: bool,
    /// Also write the table to this Markdown file.
    #[arg(long)]
    write: Option<std::path::PathBuf>,
    /// Concurrent clients for the request rows.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Extra environment for one service, as `SERVICE:NAME=VALUE` (repeatable), e.g.
    /// `identity-service:LOOKUP_SLOTS=1`, to compare settings.
    #[arg(long = "env", value_name = "SERVICE:NAME=VALUE")]
    service_env: Vec<String>,
    /// HTTP/2 connections the gRPC read rows multiplex their concurrent calls over (default:
    /// one per concurrent caller).
    #[arg(long)]
    grpc_connections: Option<usize>,
    /// Only these rows (comma-separated; all when absent). `reads` also runs `ingest`, which
    /// creates the users it reads.
    #[arg(long, value_enum, value_delimiter = ',')]
    rows: Vec<Row>,
}

/// The rows of the table.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Row {
    Ingest,
    Reads,
    Token,
    /// Deletion: the delete webhook's latency and the purge's throughput.
    Delete,
    Liveblocks,
    /// Reconcile of users, and of organizations and memberships, already in step, against
    /// paging the Clerk stand-in alone.
    Reconcile,
    /// A workspace read (`ListChannels`) with the revocation check, against its SQL.
    WorkspaceRead,
    /// Live fan-out: many `WatchChannel` streams on one channel, messages posted at a rate.
    Fanout,
}

struct Scale {
    ingest: usize,
    reads: usize,
    verifies: usize,
    messages_per_channel: usize,
    items_per_room: usize,
    rooms: usize,
}

#[derive(Default)]
struct Stats {
    elapsed: Duration,
    latencies_ms: Vec<f64>,
    errors: usize,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    }
}

/// Runs `total` calls of `f` over `states.len()` concurrent workers; bounded by count.
async fn load<S, F, Fut>(states: Vec<S>, total: usize, f: F) -> Stats
where
    S: Clone + Send + 'static,
    F: Fn(S, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let errors = Arc::new(AtomicUsize::new(0));
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
    let latencies_ms = Arc::try_unwrap(lat)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_default();
    Stats {
        elapsed: started.elapsed(),
        latencies_ms,
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Brings freshly loaded tables to a steady state before a timed delete, the same for both
/// sides: vacuumed (hint bits set), analysed, and no checkpoint owed for the load.
async fn settle(db: &tokio_postgres::Client) -> Result<()> {
    db.batch_execute("VACUUM ANALYZE").await?;
    db.batch_execute("CHECKPOINT").await?;
    Ok(())
}

/// A baseline client: one connection with its statements prepared once, as a service's pool
/// keeps them (no parse or plan round trip per call).
#[derive(Clone)]
struct Direct {
    db: Arc<tokio_postgres::Client>,
    upsert: tokio_postgres::Statement,
    select: tokio_postgres::Statement,
}

impl Direct {
    async fn connect(url: &str) -> Result<Self> {
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

/// The statements of a `ListChannels` call, prepared once per connection: the workspace with
/// the caller's standing (the revocation check) in one statement, then the page; and, to see
/// what the check costs, the workspace alone.
#[derive(Clone)]
struct WsDirect {
    db: Arc<tokio_postgres::Client>,
    checked: tokio_postgres::Statement,
    workspace: tokio_postgres::Statement,
    page: tokio_postgres::Statement,
}

impl WsDirect {
    async fn connect(url: &str) -> Result<Self> {
        let db = pg(url).await?;
        let checked = db
            .prepare(
                "SELECT w.id::text, w.clerk_org_id, w.name, w.slug, w.owner_clerk_id, w.source_updated_at,
                        w.created_at, w.updated_at,
                        EXISTS (SELECT 1 FROM removed_users
                                 WHERE clerk_user_id = $2 AND removed_at > to_timestamp($3)) AS removed,
                        m.deleted AS membership_deleted, m.role
                   FROM workspaces w
                   LEFT JOIN memberships m
                     ON m.clerk_org_id = w.clerk_org_id AND m.clerk_user_id = $2
                    AND CASE WHEN m.deleted THEN m.deleted_at ELSE m.source_updated_at END > to_timestamp($3)
                  WHERE w.clerk_org_id = $1 AND w.deleted_at IS NULL",
            )
            .await?;
        let workspace = db
            .prepare(
                "SELECT id::text, clerk_org_id, name, slug, owner_clerk_id, source_updated_at, created_at, updated_at
                 FROM workspaces WHERE clerk_org_id = $1 AND deleted_at IS NULL LIMIT 1",
            )
            .await?;
        let page = db
            .prepare(
                "SELECT id, workspace_id, name, created_by, created_at, updated_at FROM channels
                 WHERE workspace_id = $1::text::uuid ORDER BY created_at, id LIMIT 51",
            )
            .await?;
        Ok(Self {
            db,
            checked,
            workspace,
            page,
        })
    }

    async fn read(&self, user: &str, with_check: bool) -> Result<()> {
        let ws = if with_check {
            self.db
                .query_one(&self.checked, &[&"org_bread", &user, &(now_secs() as f64)])
                .await?
        } else {
            self.db.query_one(&self.workspace, &[&"org_bread"]).await?
        };
        let id: String = ws.get(0);
        self.db.query(&self.page, &[&id]).await?;
        Ok(())
    }
}

async fn pg(url: &str) -> Result<Arc<tokio_postgres::Client>> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(Arc::new(c))
}

/// A signed delivery: body and headers, ready to send.
type Delivery = (bytes::Bytes, http::HeaderMap);

/// `n` signed `user.updated` deliveries over `users` users, made before the clock starts:
/// signing is the sender's (Svix's) work, not the gateway's. `tag` keeps warm-up users and
/// deliveries apart.
fn signed_deliveries(
    secret: &str,
    tag: &str,
    n: usize,
    users: usize,
    base_ms: i64,
) -> Result<Arc<Vec<Delivery>>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let body = user_updated(&format!("user_{tag}{}", i % users), base_ms + i as i64);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::HOST,
            http::HeaderValue::from_static("gateway"),
        );
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        for (k, v) in sign_webhook(secret, &format!("msg_{tag}_{i}"), &body)? {
            headers.insert(k, v.parse()?);
        }
        out.push((bytes::Bytes::from(body), headers));
    }
    Ok(Arc::new(out))
}

/// One keep-alive HTTP/1.1 connection per load worker, as Svix keeps one per delivery in flight.
#[derive(Clone)]
struct Http(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>>>);

impl Http {
    async fn connect(addr: &str) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self(Arc::new(tokio::sync::Mutex::new(send))))
    }

    /// POSTs one delivery to `/clerk`; true on 200.
    async fn post(self, (body, headers): Delivery) -> bool {
        let mut req = http::Request::new(Full::new(body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = http::Uri::from_static("/clerk");
        *req.headers_mut() = headers;
        let mut conn = self.0.lock().await;
        if conn.ready().await.is_err() {
            return false;
        }
        match conn.send_request(req).await {
            Ok(resp) => {
                let ok = resp.status() == http::StatusCode::OK;
                ok && resp.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        }
    }
}

fn user_updated(user: &str, updated_ms: i64) -> Vec<u8> {
    json!({"data": {"id": user, "object": "user", "first_name": "Bench", "last_name": format!("{updated_ms}"),
                    "primary_email_address_id": "idn_1", "image_url": "https://img.clerk.com/b",
                    "email_addresses": [{"id": "idn_1", "email_address": format!("{user}@example.org")}],
                    "created_at": 1_700_000_000_000_i64, "updated_at": updated_ms},
           "object": "event", "type": "user.updated", "timestamp": updated_ms})
    .to_string()
    .into_bytes()
}

/// The cascade fixture: channels x messages, receipts, 4 kinds of rooms with items/meetings.
///
/// Every child table is filled in the same order on both sides, interleaved across its parents
/// (`ORDER BY g, parent`), as a workspace's messages arrive over time: left to the planner, the
/// join order (and so which pages hold a channel's messages) changed with the tables'
/// statistics, and a delete over channel-clustered pages ran a third faster than over
/// interleaved ones.
fn populate_sql(ws: &str, s: &Scale) -> String {
    format!(
        "INSERT INTO channels (id, workspace_id, name) SELECT gen_random_uuid(), '{ws}', 'c' || g FROM generate_series(1, 20) g;
         INSERT INTO messages (id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), c.id, 'user_' || (g % 1000), 'message ' || g, now() - g * interval '1 second'
             FROM channels c, generate_series(1, {m}) g WHERE c.workspace_id = '{ws}' ORDER BY g, c.id;
         INSERT INTO read_receipts (channel_id, clerk_user_id, last_read_at)
           SELECT c.id, 'user_' || g, now() FROM channels c, generate_series(1, {r}) g WHERE c.workspace_id = '{ws}' ORDER BY g, c.id;
         INSERT INTO rooms (id, workspace_id, kind, name)
           SELECT gen_random_uuid(), '{ws}', (ARRAY['document','code','whiteboard','conference'])[1 + g % 4], 'r' || g FROM generate_series(0, {rooms}) g;
         INSERT INTO documents (id, room_id, name) SELECT gen_random_uuid(), r.id, 'd' || g FROM rooms r, generate_series(1, {i}) g WHERE r.kind = 'document' AND r.workspace_id = '{ws}' ORDER BY g, r.id;
         INSERT INTO code_files (id, room_id, name) SELECT gen_random_uuid(), r.id, 'f' || g FROM rooms r, generate_series(1, {i}) g WHERE r.kind = 'code' AND r.workspace_id = '{ws}' ORDER BY g, r.id;
         INSERT INTO whiteboards (id, room_id, name) SELECT gen_random_uuid(), r.id, 'w' || g FROM rooms r, generate_series(1, {i}) g WHERE r.kind = 'whiteboard' AND r.workspace_id = '{ws}' ORDER BY g, r.id;
         INSERT INTO meetings (id, room_id, title, starts_at, ends_at)
           SELECT gen_random_uuid(), r.id, 'm' || g, now(), now() + interval '1 hour' FROM rooms r, generate_series(1, {i}) g WHERE r.kind = 'conference' AND r.workspace_id = '{ws}' ORDER BY g, r.id;
         ANALYZE;",
        m = s.messages_per_channel,
        r = s.messages_per_channel / 45,
        rooms = s.rooms - 1,
        i = s.items_per_room
    )
}

/// Polls `count` (a `SELECT count(*)`) every `poll` until it is 0 (600 s at most).
async fn until_empty(db: &tokio_postgres::Client, count: &str, poll: Duration) -> Result<()> {
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

/// One deletion of a freshly loaded workspace: the delete webhook's answer, then the purge.
#[derive(Default)]
struct OursDeleted {
    /// From sending `organization.deleted` to the gateway's 2xx.
    answered: Duration,
    /// From the answer until the purge job is gone.
    purged: Duration,
    rows_before: i64,
}

/// Loads a workspace of `s`'s size through our schema, deletes it with a signed
/// `organization.deleted` through the gateway, and waits for its purge.
async fn delete_ours(
    stack: &Stack,
    wsc: &mut WorkspaceServiceClient<Channel>,
    minter: &ServiceTokenMinter,
    wdb: &tokio_postgres::Client,
    s: &Scale,
    round: usize,
) -> Result<OursDeleted> {
    let org = format!("org_bench{round}");
    let ws = wsc
        .upsert_workspace(service_harness::bearer(
            wsp::UpsertWorkspaceCommand {
                event_id: format!("bench-ws{round}"),
                occurred_at: service_harness::ts(now_secs()),
                clerk_org_id: org.clone(),
                name: "Bench".into(),
                slug: String::new(),
                owner_clerk_id: String::new(),
                event_time: None,
                ..Default::default()
            },
            &minter.token_for("workspace-service")?,
        ))
        .await?
        .into_inner()
        .workspace
        .context("workspace")?;
    wdb.batch_execute(&populate_sql(&ws.id, s)).await?;
    settle(wdb).await?;
    let rows_before = wdb.query_one(COUNT_ROWS, &[]).await?.get(0);
    let body = json!({"data": {"deleted": true, "id": org, "object": "organization"},
                      "object": "event", "type": "organization.deleted", "timestamp": now_secs() * 1000})
    .to_string()
    .into_bytes();
    let headers = sign_webhook(
        &stack.state.webhook_secret,
        &format!("msg_bench_del{round}"),
        &body,
    )?;
    let mut req = reqwest::Client::new()
        .post(format!("{}/clerk", stack.state.gateway_url))
        .body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let t = Instant::now();
    let resp = req.send().await?;
    let answered = t.elapsed();
    anyhow::ensure!(
        resp.status() == 200,
        "the delete webhook answered {}",
        resp.status()
    );
    let t = Instant::now();
    until_empty(
        wdb,
        "SELECT count(*) FROM purge_jobs",
        Duration::from_millis(5),
    )
    .await?;
    let purged = t.elapsed();
    let rows_after: i64 = wdb.query_one(COUNT_ROWS, &[]).await?.get(0);
    anyhow::ensure!(rows_after == 0, "{rows_after} rows left after the purge");
    // The queued rooms are not part of the next round.
    wdb.batch_execute("DELETE FROM liveblocks_cleanup_jobs")
        .await?;
    Ok(OursDeleted {
        answered,
        purged,
        rows_before,
    })
}

/// Loads an identical copy into a fresh database (workspace-service's migrations, run by its
/// binary, with every foreign key `ON DELETE CASCADE`) and times one raw `DELETE` of
/// its workspace. Returns the time and the number of rows the workspace held (counted as for
/// ours).
async fn delete_baseline(stack: &Stack, s: &Scale) -> Result<(Duration, i64)> {
    let admin = pg(&stack.admin_db()).await?;
    admin
        .batch_execute("DROP DATABASE IF EXISTS bench_cascade")
        .await?;
    admin.batch_execute("CREATE DATABASE bench_cascade").await?;
    let url = ephemeral_postgres::with_database(&stack.admin_db(), "bench_cascade");
    let bdb = pg(&url).await?;
    let migrated = tokio::process::Command::new(stack.binary_path(Which::Workspace))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .await?;
    anyhow::ensure!(
        migrated.status.success(),
        "migrating the baseline's copy: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    bdb.batch_execute(CASCADE_EVERY_KEY).await?;
    let bws = "01000000-0000-7000-8000-000000000001";
    bdb.execute(
        "INSERT INTO workspaces (id, clerk_org_id, name, source_updated_at) VALUES ($1::text::uuid, 'org_b', 'B', now())",
        &[&bws],
    )
    .await?;
    // The channel workspace-service creates with every workspace.
    bdb.execute(
        "INSERT INTO channels (id, workspace_id, name, created_by) VALUES (gen_random_uuid(), $1::text::uuid, 'general', 'system')",
        &[&bws],
    )
    .await?;
    bdb.batch_execute(&populate_sql(bws, s)).await?;
    settle(&bdb).await?;
    let rows: i64 = bdb.query_one(COUNT_ROWS, &[]).await?.get(0);
    let t = Instant::now();
    bdb.execute("DELETE FROM workspaces WHERE id = $1::text::uuid", &[&bws])
        .await?;
    Ok((t.elapsed(), rows))
}

/// Deletes `n` fresh rooms at the Liveblocks stand-in from `clients` concurrent bare HTTP
/// clients; rooms per second.
async fn raw_deletes(base_url: &str, n: usize, clients: usize) -> Result<f64> {
    let http = reqwest::Client::new();
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (http, base) = (http.clone(), base_url.to_owned());
        set.spawn(async move {
            for i in (c..n).step_by(clients) {
                let r = http
                    .delete(format!("{base}/v2/rooms/raw%3A{i}-{}", std::process::id()))
                    .bearer_auth(vbase_stack::DEV_LIVEBLOCKS_SECRET)
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 204, "stand-in answered {}", r.status());
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Rows in the tables a workspace delete empties (both sides hold one workspace).
const COUNT_ROWS: &str = "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM read_receipts) + (SELECT count(*) FROM channels) + (SELECT count(*) FROM rooms) + (SELECT count(*) FROM documents) + (SELECT count(*) FROM code_files) + (SELECT count(*) FROM whiteboards) + (SELECT count(*) FROM meetings)";

/// Turns every foreign key that does not cascade into one that does (the baseline's schema is
/// workspace-service's own, migrated by its binary, with this applied).
const CASCADE_EVERY_KEY: &str = "DO $$
DECLARE k record;
BEGIN
  FOR k IN SELECT conrelid::regclass AS tbl, conname, pg_get_constraintdef(oid) AS def
             FROM pg_constraint WHERE contype = 'f' AND confdeltype <> 'c' LOOP
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s ON DELETE CASCADE',
                   k.tbl, k.conname, k.conname, k.def);
  END LOOP;
END $$";

/// CPU seconds a process has used so far: (user + system, system alone).
fn cpu_secs(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ((ticks(11) + ticks(12)) / 100.0, ticks(12) / 100.0)
}

/// CPU seconds used so far by the live processes named `postgres` (the cluster's backends).
fn postgres_cpu() -> f64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    procs
        .filter_map(|p| p.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| cpu_secs(pid).0)
        .sum()
}

/// Context switches (voluntary and forced) of a process's live threads so far.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Busy CPU seconds and context switches of the whole machine so far (one read of
/// `/proc/stat`).
fn machine_counters() -> (f64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0.0, 0);
    };
    // user nice system idle iowait irq softirq steal
    let busy: f64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse::<f64>().ok())
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    let switches = stat
        .lines()
        .find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
        .unwrap_or(0);
    (busy / 100.0, switches)
}

/// CPU and context switches per call during a phase: our processes, this load generator, and
/// the rest of the machine (PostgreSQL).
struct CpuProbe {
    pids: Vec<(&'static str, u32)>,
    start: Vec<((f64, f64), u64)>,
    machine: (f64, u64),
}

impl CpuProbe {
    fn start(stack: &Stack) -> Self {
        let mut pids: Vec<(&'static str, u32)> =
            [Which::Gateway, Which::Identity, Which::Workspace]
                .iter()
                .filter_map(|w| stack.pid(*w).map(|p| (w.binary(), p)))
                .collect();
        pids.push(("load generator", std::process::id()));
        let start = pids
            .iter()
            .map(|(_, p)| (cpu_secs(*p), context_switches(*p)))
            .collect();
        Self {
            pids,
            start,
            machine: machine_counters(),
        }
    }

    fn per_call(&self, calls: usize) -> String {
        let calls = calls.max(1) as f64;
        let (mut ours, mut ours_switches) = (0.0, 0);
        let (mut parts, mut switches) = (Vec::new(), Vec::new());
        for ((name, pid), ((cpu, sys), ctx)) in self.pids.iter().zip(&self.start) {
            let (now, now_sys) = cpu_secs(*pid);
            let (used, in_kernel) = (now - cpu, now_sys - sys);
            let switched = context_switches(*pid).saturating_sub(*ctx);
            ours += used;
            ours_switches += switched;
            let us = used * 1e6 / calls;
            // The kernel's share only where the process did measurable work in the phase.
            parts.push(if us >= 0.5 {
                format!(
                    "{name} {us:.0} ({:.0} % in the kernel)",
                    100.0 * in_kernel / used
                )
            } else {
                format!("{name} {us:.0}")
            });
            switches.push(format!("{name} {:.1}", switched as f64 / calls));
        }
        let (busy, machine_switches) = machine_counters();
        let rest = (busy - self.machine.0 - ours).max(0.0);
        let rest_switches = machine_switches
            .saturating_sub(self.machine.1)
            .saturating_sub(ours_switches);
        parts.push(format!("PostgreSQL/other {:.0}", rest * 1e6 / calls));
        switches.push(format!(
            "PostgreSQL/other {:.1}",
            rest_switches as f64 / calls
        ));
        format!(
            "CPU µs/call: {}; context switches/call: {}",
            parts.join(", "),
            switches.join(", ")
        )
    }
}

/// Count and sum of a Prometheus histogram, read from a service's `/metrics`.
async fn histogram(url: &str, name: &str) -> Option<(f64, f64)> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    let value = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((value("count")?, value("sum")?))
}

/// How a phase's requests were batched: the change of a size histogram over the phase.
struct BatchProbe {
    url: String,
    name: &'static str,
    before: (f64, f64),
}

impl BatchProbe {
    async fn start(stack: &Stack, name: &'static str) -> Option<Self> {
        let url = stack.metrics_url(Which::Identity)?;
        let before = histogram(&url, name).await?;
        Some(Self { url, name, before })
    }

    async fn report(self, what: &str) -> String {
        match histogram(&self.url, self.name).await {
            Some((n, sum)) if n > self.before.0 => format!(
                "{what}: {:.0} database statements, {:.1} requests each on average",
                n - self.before.0,
                (sum - self.before.1) / (n - self.before.0)
            ),
            _ => format!("{what}: no batches seen"),
        }
    }
}

/// Resident memory of a process now, KiB.
fn vm_rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct Fanout {
    p50: f64,
    p99: f64,
    arrivals: usize,
    kib_per_stream: f64,
}

/// The development stack's Clerk signing key (user tokens) and a minter of the stack's own
/// service tokens (granted every method).
fn stack_signers(stack: &Stack) -> Result<(SigningKey, ServiceTokenMinter)> {
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
async fn bench_workspace(
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

/// Deletes the workspace of `org` and waits for its purge: the rows that count the workspace
/// tables find nothing left behind.
async fn drop_bench_workspace(
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

/// `watchers` streams on one channel (200 per HTTP/2 connection), then `posts` messages at
/// `rate` per second; latencies from each post's answer to its arrival at every watcher.
async fn fanout(stack: &Stack, watchers: usize, posts: usize, rate: f64) -> Result<Fanout> {
    use vbase_proto::workspace::v1::channel_event::Event;
    let (key, minter) = stack_signers(stack)?;
    let service = minter.token_for("workspace-service")?;
    let chan = Channel::from_shared(format!("http://{}", stack.workspace_addr))?
        .connect()
        .await?;
    let mut wsc = WorkspaceServiceClient::new(chan);
    bench_workspace(&mut wsc, &service, "org_bfan", "Fan-out").await?;
    let channel_id = wsc
        .create_channel(service_harness::bearer(
            wsp::CreateChannelRequest {
                clerk_org_id: "org_bfan".into(),
                name: "live".into(),
            },
            &service,
        ))
        .await?
        .into_inner()
        .channel
        .context("channel")?
        .id;
    // One member per stream, as in a channel (a user may hold WATCH_MAX_PER_USER at most).
    let tokens = (0..watchers)
        .map(|i| {
            key.sign(&dev_user_claims(
                &stack.state,
                &format!("user_fan{i}"),
                Some("org_bfan"),
                "org:member",
                "F",
                "f@example.org",
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pid = stack
        .pid(Which::Workspace)
        .context("workspace-service pid")?;
    let before = vm_rss_kib(pid).unwrap_or_default();
    let mut conns = Vec::new();
    for _ in 0..watchers.div_ceil(200) {
        conns.push(
            Channel::from_shared(format!("http://{}", stack.workspace_addr))?
                .connect()
                .await?,
        );
    }
    let mut streams = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let mut s = WorkspaceServiceClient::new(conns[i / 200].clone())
            .watch_channel(service_harness::bearer(
                wsp::WatchChannelRequest {
                    channel_id: channel_id.clone(),
                    resume_token: String::new(),
                },
                &tokens[i],
            ))
            .await?
            .into_inner();
        anyhow::ensure!(
            matches!(
                s.message().await?.and_then(|e| e.event),
                Some(Event::CaughtUp(_))
            ),
            "a watch did not start"
        );
        streams.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kib_per_stream = (vm_rss_kib(pid).unwrap_or_default() - before) / watchers as f64;
    // Each watcher notes when each message arrived.
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(posts);
                while seen.len() < posts {
                    match tokio::time::timeout(Duration::from_secs(20), s.message()).await {
                        Ok(Ok(Some(e))) => {
                            if let Some(Event::MessagePosted(m)) = e.event {
                                seen.push((m.body, Instant::now()));
                            }
                        }
                        _ => break,
                    }
                }
                seen
            })
        })
        .collect();
    let answered: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut senders = Vec::new();
    for i in 0..posts {
        tick.tick().await;
        let (mut c, t, ch, answered) = (
            wsc.clone(),
            service.clone(),
            channel_id.clone(),
            answered.clone(),
        );
        senders.push(tokio::spawn(async move {
            let body = format!("m{i}");
            let r = c
                .post_message(service_harness::bearer(
                    wsp::PostMessageRequest {
                        channel_id: ch,
                        body: body.clone(),
                        author_clerk_id: "user_fan".into(),
                    },
                    &t,
                ))
                .await;
            if r.is_ok() {
                answered.lock().unwrap().insert(body, Instant::now());
            }
        }));
    }
    join_all(senders).await;
    let mut lat = Stats::default();
    let mut arrivals = 0;
    for r in join_all(readers).await {
        let seen = r?;
        let answered = answered.lock().unwrap();
        for (body, at) in seen {
            arrivals += 1;
            if let Some(sent) = answered.get(&body) {
                // An arrival can beat the answer back to the poster: that counts as 0.
                lat.latencies_ms
                    .push(at.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
            }
        }
    }
    let wdb = pg(&stack.workspace_db).await?;
    drop_bench_workspace(
        &mut wsc,
        &minter.token_for("workspace-service")?,
        &wdb,
        "org_bfan",
    )
    .await?;
    Ok(Fanout {
        p50: lat.pct(0.5),
        p99: lat.pct(0.99),
        arrivals,
        kib_per_stream,
    })
}

fn vm_hwm_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {mem} RAM")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let s = if args.smoke {
        Scale {
            ingest: 300,
            reads: 600,
            verifies: 500,
            messages_per_channel: 450,
            items_per_room: 10,
            rooms: 20,
        }
    } else {
        Scale {
            ingest: 20000,
            reads: 20000,
            verifies: 20000,
            messages_per_channel: 45000,
            items_per_room: 400,
            rooms: 200,
        }
    };
    let rooms_to_clean = if args.smoke { 200 } else { 10_000 };
    let c = args.concurrency;
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary dir")?
        .to_path_buf();
    let state = std::env::temp_dir().join(format!("vbase-bench-{}", std::process::id()));
    let mut cfg = StackConfig::dev(bin_dir, state.clone());
    cfg.durable = true;
    cfg.extra_env.insert(
        "workspace-service",
        vec![
            ("LIVEBLOCKS_CONCURRENCY".into(), "8".into()),
            ("LIVEBLOCKS_POLL_MS".into(), "20".into()),
            ("LIVEBLOCKS_BACKOFF_BASE_MS".into(), "100".into()),
            ("LIVEBLOCKS_BACKOFF_MAX_SECS".into(), "1".into()),
            ("DB_POOL_SIZE".into(), "32".into()),
            ("LOG_FORMAT".into(), "json".into()),
        ],
    );
    cfg.extra_env.insert(
        "identity-service",
        vec![
            ("DB_POOL_SIZE".into(), "32".into()),
            ("LOG_FORMAT".into(), "json".into()),
        ],
    );
    // Production logging: JSON, one line per applied webhook.
    cfg.extra_env.insert(
        "webhook-gateway",
        vec![("LOG_FORMAT".into(), "json".into())],
    );
    for e in &args.service_env {
        let (service, pair) = e
            .split_once(':')
            .context("--env wants SERVICE:NAME=VALUE")?;
        let (name, value) = pair
            .split_once('=')
            .context("--env wants SERVICE:NAME=VALUE")?;
        let service = [Which::Identity, Which::Workspace, Which::Gateway]
            .into_iter()
            .map(Which::binary)
            .find(|b| *b == service)
            .with_context(|| format!("--env: unknown service {service}"))?;
        cfg.extra_env
            .entry(service)
            .or_default()
            .push((name.to_owned(), value.to_owned()));
    }
    eprintln!("starting the stack (release binaries, durable PostgreSQL)...");
    let stack = Stack::start(cfg).await?;
    let mut rows: Vec<[String; 4]> = Vec::new();
    // CPU per call by process, for the rows that drive the services over the network.
    let mut cpu: Vec<String> = Vec::new();
    let mut batching: Vec<String> = Vec::new();
    let want = |r: Row| args.rows.is_empty() || args.rows.contains(&r);
    let users = 500.min(s.ingest);
    let mut conns = Vec::new();
    for _ in 0..c {
        conns.push(Direct::connect(&stack.identity_db).await?);
    }
    let live = stack.liveblocks.as_ref().context("liveblocks stand-in")?;
    let wdb = pg(&stack.workspace_db).await?;

    if want(Row::Ingest) || want(Row::Reads) {
        // 1. Webhook ingest vs the same upsert straight to PostgreSQL.
        let secret = stack.state.webhook_secret.clone();
        let addr = stack
            .state
            .gateway_url
            .trim_start_matches("http://")
            .to_owned();
        let base_ms = now_secs() * 1000 - 86_400_000;
        let mut senders = Vec::new();
        for _ in 0..c {
            senders.push(Http::connect(&addr).await?);
        }
        // Warm-up, not measured: the services open their pooled connections and prepare their
        // statements, as the baseline's connections are opened before its clock starts.
        let warm = signed_deliveries(&secret, "w", 8 * c, users, base_ms)?;
        load(senders.clone(), 8 * c, move |h: Http, i| {
            h.post(warm[i].clone())
        })
        .await;
        let deliveries = signed_deliveries(&secret, "b", s.ingest, users, base_ms)?;
        // Both sides start from the same state: vacuumed, and no checkpoint owed for earlier
        // writes (one falling inside a timed phase makes that side pay for full-page writes).
        settle(&conns[0].db).await?;
        let batches = BatchProbe::start(&stack, "identity_upsert_batch_size").await;
        let probe = CpuProbe::start(&stack);
        let ours = load(senders, s.ingest, move |h: Http, i| {
            h.post(deliveries[i].clone())
        })
        .await;
        cpu.push(format!("ingest, ours: {}", probe.per_call(s.ingest)));
        if let Some(b) = batches {
            batching.push(b.report("ingest upserts (group commit)").await);
        }
        settle(&conns[0].db).await?;
        let probe = CpuProbe::start(&stack);
        let base = load(conns.clone(), s.ingest, move |d: Direct, i| async move {
            let ts = std::time::SystemTime::UNIX_EPOCH
                + Duration::from_millis((base_ms + i as i64) as u64);
            d.db.execute(
                &d.upsert,
                &[
                    &format!("user_p{}", i % users),
                    &"Bench",
                    &"p@example.org",
                    &"https://img.clerk.com/b",
                    &ts,
                ],
            )
            .await
            .is_ok()
        })
        .await;
        cpu.push(format!("ingest, baseline: {}", probe.per_call(s.ingest)));
        rows.push([
            format!(
                "webhook ingest, {} signed `user.updated` at concurrency {c}",
                s.ingest
            ),
            format!(
                "{:.0} events/s, p50 {:.1} ms, p99 {:.1} ms ({} errors)",
                ours.rate(),
                ours.pct(0.5),
                ours.pct(0.99),
                ours.errors
            ),
            format!(
                "{:.0} upserts/s, p50 {:.1} ms, p99 {:.1} ms",
                base.rate(),
                base.pct(0.5),
                base.pct(0.99)
            ),
            format!(
                "{:.2}x rate (goal >= 0.5), p99 {:.1} ms (goal <= 50)",
                ours.rate() / base.rate(),
                ours.pct(0.99)
            ),
        ]);
    }

    if want(Row::Reads) {
        // 2. Authenticated reads vs a SELECT by primary key.
        let key = SigningKey::from_pem(&std::fs::read_to_string(
            stack
                .state
                .clerk_signing_key_file
                .as_ref()
                .context("dev issuer key")?,
        )?)?;
        let tokens: Arc<Vec<String>> = Arc::new(
            (0..users)
                .map(|u| {
                    key.sign(&dev_user_claims(
                        &stack.state,
                        &format!("user_b{u}"),
                        None,
                        "",
                        "B",
                        "b@example.org",
                    ))
                    .unwrap()
                })
                .collect(),
        );
        // The callers' connections (one each unless `--grpc-connections`), used by the reads and
        // then by the health checks.
        let mut opened = Vec::new();
        for _ in 0..args.grpc_connections.unwrap_or(c).clamp(1, c) {
            opened.push(
                Channel::from_shared(format!("http://{}", stack.identity_addr))?
                    .connect()
                    .await?,
            );
        }
        let channels: Vec<Channel> = (0..c).map(|i| opened[i % opened.len()].clone()).collect();
        let clients: Vec<_> = channels
            .iter()
            .cloned()
            .map(IdentityServiceClient::new)
            .collect();
        let toks = tokens.clone();
        // Both sides read from the same state: the ingest row left each user's row with dead
        // versions, and whichever side read first would pay for pruning them and for setting
        // their hint bits (page writes, WAL), while the other read clean pages.
        settle(&conns[0].db).await?;
        let batches = BatchProbe::start(&stack, "identity_lookup_batch_size").await;
        let probe = CpuProbe::start(&stack);
        let ours = load(
            clients,
            s.reads,
            move |mut cl: IdentityServiceClient<Channel>, i| {
                let tok = toks[i % toks.len()].clone();
                async move {
                    cl.get_current_user(service_harness::bearer(
                        idp::GetCurrentUserRequest {},
                        &tok,
                    ))
                    .await
                    .is_ok()
                }
            },
        )
        .await;
        cpu.push(format!("read, ours: {}", probe.per_call(s.reads)));
        if let Some(b) = batches {
            batching.push(b.report("reads (coalesced lookups)").await);
        }
        settle(&conns[0].db).await?;
        let probe = CpuProbe::start(&stack);
        let base = load(conns.clone(), s.reads, move |d: Direct, i| async move {
            d.db.query_opt(&d.select, &[&format!("user_b{}", i % users)])
                .await
                .is_ok()
        })
        .await;
        cpu.push(format!("read, baseline: {}", probe.per_call(s.reads)));
        // What one gRPC hop costs by itself: the health check (no token, no database) on the
        // same connections at the same concurrency; no read through gRPC can beat it.
        let health: Vec<_> = channels.into_iter().map(HealthClient::new).collect();
        let probe = CpuProbe::start(&stack);
        let floor = load(
            health,
            s.reads,
            |mut h: HealthClient<Channel>, _| async move {
                h.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok()
            },
        )
        .await;
        cpu.push(format!(
            "gRPC floor (health check): {}",
            probe.per_call(s.reads)
        ));
        rows.push([
            format!("authenticated read `GetCurrentUser` (RS256), concurrency {c}"),
            format!(
                "{:.0} RPS, p99 {:.1} ms ({} errors)",
                ours.rate(),
                ours.pct(0.99),
                ours.errors
            ),
            format!("{:.0} SELECT/s, p99 {:.1} ms", base.rate(), base.pct(0.99)),
            format!("{:.2}x (goal >= 0.5)", ours.rate() / base.rate()),
        ]);
        rows.push([
            format!("reference: gRPC health check on the same server (no token, no database), concurrency {c}"),
            format!(
                "{:.0} RPS, p99 {:.1} ms ({} errors)",
                floor.rate(),
                floor.pct(0.99),
                floor.errors
            ),
            format!("{:.0} SELECT/s (the read baseline)", base.rate()),
            format!(
                "{:.2}x (no goal: the most any gRPC read could reach here)",
                floor.rate() / base.rate()
            ),
        ]);
    }

    if want(Row::WorkspaceRead) {
        // 3b. A workspace read with a user token: the organization and revocation checks and
        //     the page, against the same three statements sent straight to PostgreSQL, and
        //     against the two without the revocation check (what the check costs).
        let (key, minter) = stack_signers(&stack)?;
        let ws_channel = Channel::from_shared(format!("http://{}", stack.workspace_addr))?
            .connect()
            .await?;
        let mut wsc = WorkspaceServiceClient::new(ws_channel.clone());
        let token = minter.token_for("workspace-service")?;
        bench_workspace(&mut wsc, &token, "org_bread", "Reads").await?;
        let readers = 100;
        for u in 0..readers {
            wsc.upsert_membership(service_harness::bearer(
                wsp::UpsertMembershipCommand {
                    event_id: format!("bench-read-m{u}"),
                    occurred_at: service_harness::ts(now_secs() - 60),
                    clerk_org_id: "org_bread".into(),
                    clerk_user_id: format!("user_r{u}"),
                    role: "org:member".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await?;
        }
        let tokens: Arc<Vec<String>> = Arc::new(
            (0..readers)
                .map(|u| {
                    key.sign(&dev_user_claims(
                        &stack.state,
                        &format!("user_r{u}"),
                        Some("org_bread"),
                        "org:member",
                        "R",
                        "r@example.org",
                    ))
                    .unwrap()
                })
                .collect(),
        );
        let mut opened = Vec::new();
        for _ in 0..c {
            opened.push(
                Channel::from_shared(format!("http://{}", stack.workspace_addr))?
                    .connect()
                    .await?,
            );
        }
        let clients: Vec<_> = opened
            .into_iter()
            .map(WorkspaceServiceClient::new)
            .collect();
        let wdb = pg(&stack.workspace_db).await?;
        settle(&wdb).await?;
        let probe = CpuProbe::start(&stack);
        let toks = tokens.clone();
        let ours = load(
            clients,
            s.reads,
            move |mut cl: WorkspaceServiceClient<Channel>, i| {
                let tok = toks[i % toks.len()].clone();
                async move {
                    cl.list_channels(service_harness::bearer(
                        wsp::ListChannelsRequest {
                            clerk_org_id: "org_bread".into(),
                            page_size: 0,
                            page_token: String::new(),
                        },
                        &tok,
                    ))
                    .await
                    .is_ok()
                }
            },
        )
        .await;
        cpu.push(format!("workspace read, ours: {}", probe.per_call(s.reads)));
        let mut direct = Vec::new();
        for _ in 0..c {
            direct.push(WsDirect::connect(&stack.workspace_db).await?);
        }
        let base = |with_check: bool| {
            let direct = direct.clone();
            async move {
                load(direct, s.reads, move |d: WsDirect, i| async move {
                    d.read(&format!("user_r{}", i % 100), with_check)
                        .await
                        .is_ok()
                })
                .await
            }
        };
        settle(&wdb).await?;
        let probe = CpuProbe::start(&stack);
        let full = base(true).await;
        cpu.push(format!(
            "workspace read, baseline: {}",
            probe.per_call(s.reads)
        ));
        let unchecked = base(false).await;
        rows.push([
            format!("authenticated workspace read `ListChannels` (org and revocation checks), concurrency {c}"),
            format!(
                "{:.0} RPS, p99 {:.1} ms ({} errors)",
                ours.rate(),
                ours.pct(0.99),
                ours.errors
            ),
            format!(
                "{:.0}/s its two statements straight to PostgreSQL, p99 {:.1} ms; {:.0}/s without the revocation check in the first ({:.0} % more)",
                full.rate(),
                full.pct(0.99),
                unchecked.rate(),
                (unchecked.rate() / full.rate() - 1.0) * 100.0
            ),
            format!("{:.2}x (goal >= 0.5)", ours.rate() / full.rate()),
        ]);
        // Leave nothing behind for the rows that count the workspace tables.
        drop_bench_workspace(
            &mut wsc,
            &minter.token_for("workspace-service")?,
            &wdb,
            "org_bread",
        )
        .await?;
    }

    if want(Row::Fanout) {
        // 7. Live fan-out: watchers of one channel, messages posted at 100/s; latency from each
        //    post's answer to its arrival at every watcher, and memory per idle stream.
        let (watchers, posts) = if args.smoke { (50, 20) } else { (1000, 500) };
        let f = fanout(&stack, watchers, posts, 100.0).await?;
        rows.push([
            format!(
                "live fan-out: {watchers} `WatchChannel` streams on one channel, {posts} messages posted at 100/s"
            ),
            format!(
                "post answered -> arrival at each watcher: p50 {:.1} ms, p99 {:.1} ms ({} of {} arrivals); {:.1} KiB per idle stream",
                f.p50, f.p99, f.arrivals, watchers * posts, f.kib_per_stream
            ),
            "Supabase Realtime (published): 46 ms median, 132 ms p95".into(),
            format!(
                "p99 {:.1} ms (goal <= 50), {:.1} KiB per idle stream (goal <= 32)",
                f.p99, f.kib_per_stream
            ),
        ]);
    }

    if want(Row::Token) {
        // 3. Token check cost per call vs the bare signature verification of the same token.
        let vkey = SigningKey::generate_rsa()?;
        let jwks = JwksServer::start(SigningKey::jwks(&[&vkey])).await?;
        let auth = token_auth::Authenticator::new(
            Some(token_auth::ClerkSettings {
                issuer: jwks.issuer(),
                jwks: token_auth::KeySource::Url(jwks.jwks_url()),
                audience: "convex".into(),
                authorized_parties: vec![],
                leeway_secs: 5,
                max_lifetime_secs: 3600,
            }),
            None,
            token_auth::KeyStoreOptions::default(),
        );
        for st in auth.key_stores() {
            st.wait_ready(Duration::from_secs(5)).await;
        }
        let now = now_secs();
        // Every token is distinct (its `sid`), so a first sight cannot hit the verified-token cache.
        let distinct = (s.verifies / 10).max(50);
        let sign = |i: usize| {
            vkey.sign(&json!({"iss": jwks.issuer(), "sub": "user_1", "sid": format!("sess_{i}"), "aud": "convex", "iat": now, "nbf": now, "exp": now + 3600, "org_id": "org_1", "org_role": "org:admin"}))
        };
        let rounds: [Vec<String>; 2] = [
            (0..distinct).map(sign).collect::<Result<_, _>>()?,
            (distinct..2 * distinct)
                .map(sign)
                .collect::<Result<_, _>>()?,
        ];
        let decoding =
            jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(vkey.public_jwk())?)?;
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&["convex"]);
        v.set_issuer(&[jwks.issuer()]);
        let bare = |t: &str| jsonwebtoken::decode::<serde_json::Value>(t, &decoding, &v).is_ok();
        let ours = |t: &str| auth.verify(t).is_ok();
        let time = |tokens: &[String], passes: usize, f: &dyn Fn(&str) -> bool| {
            let t = Instant::now();
            let mut ok = 0;
            for _ in 0..passes {
                for token in tokens {
                    ok += usize::from(f(token));
                }
            }
            (
                t.elapsed().as_secs_f64() * 1e6 / (passes * tokens.len()) as f64,
                ok,
            )
        };
        // First sight: interleaved rounds on fresh tokens, the better of two each.
        let (b1, _) = time(&rounds[0], 1, &bare);
        let (o1, ok1) = time(&rounds[0], 1, &ours);
        let (b2, _) = time(&rounds[1], 1, &bare);
        let (o2, ok2) = time(&rounds[1], 1, &ours);
        let (ours_us, base_us) = (o1.min(o2), b1.min(b2));
        rows.push([
            format!(
                "token check per call, first sight of each token, cached key ({} tokens)",
                2 * distinct
            ),
            format!("{ours_us:.1} µs ({} verified)", ok1 + ok2),
            format!("{base_us:.1} µs (jsonwebtoken decode)"),
            format!("{:.2}x (goal <= 1.2)", ours_us / base_us),
        ]);
        // Repeats: the same tokens again (a client reuses its token until it expires).
        let passes = (s.verifies / distinct).max(1);
        let (rb, _) = time(&rounds[0], passes, &bare);
        let (ro, okr) = time(&rounds[0], passes, &ours);
        rows.push([
            format!(
                "token check per call, a token seen before ({} calls)",
                passes * distinct
            ),
            format!("{ro:.1} µs ({okr} verified)"),
            format!("{rb:.1} µs (jsonwebtoken decode)"),
            format!("{:.2}x (no goal: the verified-token cache)", ro / rb),
        ]);
    }

    if want(Row::Delete) {
        // 4. Deletion: the delete webhook's latency, and the purge's throughput, against a raw
        //    ON DELETE CASCADE delete of an identical copy (what a synchronous delete costs).
        // Liveblocks down: after a few failed calls the worker's breaker pauses it, so its calls
        // and their bookkeeping stay out of the measurement.
        live.set_mode(LiveblocksMode::Down);
        let minter = ServiceTokenMinter::new(
            SigningKey::from_pem(&std::fs::read_to_string(&stack.service_key_file)?)?,
            "vbase-internal",
            vbase_stack::STACK_CALLER,
            Duration::from_secs(600),
        );
        let mut wsc = WorkspaceServiceClient::new(
            Channel::from_shared(format!("http://{}", stack.workspace_addr))?
                .connect()
                .await?,
        );
        // Which side deletes first alternates by round, so that neither side always runs
        // straight after the other's load and delete.
        let rounds = if args.smoke { 2 } else { 4 };
        let (mut answers, mut purges, mut bases) = (Vec::new(), Vec::new(), Vec::new());
        let mut rows_before = 0;
        for round in 0..rounds {
            let ours_first = round % 2 == 0;
            let mut base = None;
            if !ours_first {
                base = Some(delete_baseline(&stack, &s).await?);
            }
            let ours = delete_ours(&stack, &mut wsc, &minter, &wdb, &s, round).await?;
            if ours_first {
                base = Some(delete_baseline(&stack, &s).await?);
            }
            let (took, base_rows) = base.context("the baseline ran")?;
            // An identical copy, or the ratio means nothing.
            anyhow::ensure!(
                base_rows == ours.rows_before,
                "the baseline's copy holds {base_rows} rows, ours {}",
                ours.rows_before
            );
            rows_before = ours.rows_before;
            answers.push(ours.answered.as_secs_f64() * 1000.0);
            purges.push(ours.purged);
            bases.push(took);
        }
        let latency = Stats {
            elapsed: Duration::from_secs(1),
            latencies_ms: answers.clone(),
            errors: 0,
        };
        let base_ms: Vec<f64> = bases.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        let base_median = {
            let mut v = base_ms.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push([
            format!("delete webhook latency, {rows_before}-row workspace, {rounds} workspaces (through the gateway)"),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms (runs: {} ms)",
                latency.pct(0.5),
                latency.pct(0.99),
                answers
                    .iter()
                    .map(|x| format!("{x:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "{base_median:.0} ms median (a synchronous raw ON DELETE CASCADE; runs: {} ms)",
                list(&base_ms)
            ),
            format!(
                "{:.3}x time, p99 {:.1} ms (goal <= 100 ms)",
                latency.pct(0.99) / base_median,
                latency.pct(0.99)
            ),
        ]);
        // Throughput: best of the rounds on each side (a delete of a million rows moves by
        // ±20 % between runs on this machine).
        let best_purge = purges.iter().min().copied().unwrap_or_default();
        let best_base = bases.iter().min().copied().unwrap_or_default();
        let rate = |d: Duration| rows_before as f64 / d.as_secs_f64();
        let secs = |v: &[Duration]| {
            v.iter()
                .map(|d| format!("{:.2}", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push([
            format!("purge of a {rows_before}-row workspace in the background, best of {rounds}"),
            format!(
                "{:.0} rows/s ({:.2} s; runs: {} s)",
                rate(best_purge),
                best_purge.as_secs_f64(),
                secs(&purges)
            ),
            format!(
                "{:.0} rows/s ({:.2} s raw ON DELETE CASCADE in one statement; runs: {} s)",
                rate(best_base),
                best_base.as_secs_f64(),
                secs(&bases)
            ),
            format!(
                "{:.2}x rate (goal >= 0.8)",
                rate(best_purge) / rate(best_base)
            ),
        ]);
    }

    if want(Row::Liveblocks) {
        // 5. Liveblocks clean-up of N rooms against a stand-in answering in 20 ms.
        live.set_latency(Duration::from_millis(20));
        live.set_mode(LiveblocksMode::Up);
        let before = live.deleted().len();
        wdb.execute(
            "INSERT INTO liveblocks_cleanup_jobs (room_id) SELECT 'doc:' || gen_random_uuid() FROM generate_series(1, $1::int)",
            &[&rooms_to_clean],
        )
        .await?;
        let t = Instant::now();
        until_empty(
            &wdb,
            "SELECT count(*) FROM liveblocks_cleanup_jobs",
            Duration::from_millis(20),
        )
        .await?;
        let took = t.elapsed().as_secs_f64();
        let done = live.deleted().len() - before;
        let rate = done as f64 / took;
        let limit = 8.0 / 0.020;
        // The same stand-in driven by 8 bare HTTP clients: what a worker could reach at best
        // (the stand-in's 20 ms sleep, the timer's rounding and the HTTP round trip).
        let raw_rooms = (rooms_to_clean / 5).max(200) as usize;
        let raw = raw_deletes(&live.base_url(), raw_rooms, 8).await?;
        rows.push([
            format!(
                "Liveblocks clean-up of {rooms_to_clean} rooms, stand-in at 20 ms, concurrency 8"
            ),
            format!("{rate:.0} rooms/s ({done} deleted in {took:.1} s)"),
            format!(
                "{limit:.0} rooms/s (8 / 20 ms); 8 bare HTTP clients on the stand-in: {raw:.0} rooms/s"
            ),
            format!(
                "{:.2}x of 8 / 20 ms (goal >= 0.95); {:.2}x of the bare clients",
                rate / limit,
                rate / raw
            ),
        ]);
    }

    if want(Row::Reconcile) {
        // 6. Reconcile of data already in step, against the Clerk stand-in answering at once:
        // users (by cursor), then organizations and memberships (by offset).
        for row in [
            reconcile::users_row(&stack, args.smoke).await?,
            reconcile::orgs_row(&stack, args.smoke).await?,
        ] {
            rows.push(row.0);
            cpu.push(row.1);
        }
    }

    // 7. Peak memory.
    let rss: Vec<String> = [Which::Identity, Which::Workspace, Which::Gateway]
        .iter()
        .map(|w| {
            format!(
                "{} {:.1} MiB",
                w.binary(),
                stack.pid(*w).and_then(vm_hwm_mib).unwrap_or(f64::NAN)
            )
        })
        .collect();
    rows.push([
        "peak RSS per service during the run".into(),
        rss.join(", "),
        "—".into(),
        "goal <= 64 MiB each".into(),
    ]);

    let mut table = format!(
        "Machine: {}. Mode: {}. PostgreSQL: ephemeral cluster, fsync on. Release build.\n\n| what | ours | baseline in the same run | ratio |\n|---|---|---|---|\n",
        machine(),
        if args.smoke {
            "smoke (small counts, not representative)"
        } else {
            "full"
        }
    );
    for r in &rows {
        table.push_str(&format!("| {} | {} | {} | {} |\n", r[0], r[1], r[2], r[3]));
    }
    table.push_str(&format!(
        "\nWhere the CPU goes (2 cores shared by everything):\n\n{}",
        cpu.iter().map(|l| format!("- {l}\n")).collect::<String>()
    ));
    if !batching.is_empty() {
        table.push_str(&format!(
            "\nHow identity-service batched (its `/metrics` histograms over each phase):\n\n{}",
            batching
                .iter()
                .map(|l| format!("- {l}\n"))
                .collect::<String>()
        ));
    }
    println!("{table}");
    if let Some(path) = args.write {
        std::fs::write(
            path,
            format!("# Benchmarks\n\nCommand: `scripts/bench`.\n\n{table}"),
        )?;
    }
    stack.stop().await?;
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}
