//! `vbase-bench [--smoke] [--write docs/benchmarks.md]`: measures the real stack against a
//! baseline measured in the same run on the same machine, and prints ratios.
//!
//! Starts the three release binaries on an ephemeral PostgreSQL with durability on (fsync),
//! drives them with a bounded built-in load generator, and compares each figure with the
//! physical limit next to it: the same SQL sent straight to PostgreSQL, the bare signature check,
//! a raw `ON DELETE CASCADE`, the configured Liveblocks concurrency over the stand-in's latency.
//!
//! One module per row (`rows/`), the load generator and shared context (`load`), the `/proc`
//! and `/metrics` probes (`probes`), the table (`report`).

use anyhow::{Context, Result};
use clap::Parser;
use load::{Bench, Direct, Scale, pg};
use report::Report;
use vbase_stack::{Stack, StackConfig, Which};

mod load;
mod probes;
mod report;
mod rows;

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
    /// The services' read caches (workspace-service's access and channel caches,
    /// identity-service's user cache): `off` makes every read a miss (the cold rows).
    #[arg(long, value_enum, default_value = "on")]
    caches: Caches,
    /// Calls in each load phase of the read rows (`reads`, `workspace-read`,
    /// `message-reads`). Default: 200000 for `reads` and `workspace-read`, whose phases then
    /// last seconds (at 20000 they lasted a third of one, and the raw select's rate swung by a
    /// quarter between runs); 20000 for `message-reads`; 600 with `--smoke`.
    #[arg(long)]
    read_calls: Option<usize>,
    /// Only these rows (comma-separated; all when absent). `reads` also runs `ingest`, which
    /// creates the users it reads.
    #[arg(long, value_enum, value_delimiter = ',')]
    rows: Vec<Row>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Caches {
    On,
    Off,
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
    /// A Liveblocks room token (`AuthorizeLiveblocksRoom`) against the stand-in's
    /// `authorize-user` alone at the same latency.
    RoomToken,
    /// Reconcile of users, and of organizations and memberships, already in step, against
    /// paging the Clerk stand-in alone.
    Reconcile,
    /// A workspace read (`ListChannels`) with the revocation check, against its SQL.
    WorkspaceRead,
    /// Live fan-out: many `WatchChannel` streams on one channel, messages posted at a rate.
    Fanout,
    /// Messages posted at full rate (`PostMessage` with user tokens) against the insert and
    /// its change-log entry in one transaction sent straight to PostgreSQL.
    Messages,
    /// Message reads (`ListMessages` with user tokens) in a small and a 1,000,000-message
    /// channel, first and deep pages, against their statements sent straight to PostgreSQL.
    MessageReads,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = stack_config(&args)?;
    let state = cfg.state_dir.clone();
    eprintln!("starting the stack (release binaries, durable PostgreSQL)...");
    let stack = Stack::start(cfg).await?;
    let b = bench(&args, &stack).await?;
    let want = |r: Row| args.rows.is_empty() || args.rows.contains(&r);
    let mut report = Report::default();
    if want(Row::Ingest) || want(Row::Reads) {
        rows::ingest::run(&b, &mut report).await?;
    }
    if want(Row::Reads) {
        rows::reads::run(&b, &mut report).await?;
    }
    if want(Row::WorkspaceRead) {
        rows::workspace_read::run(&b, &mut report).await?;
    }
    if want(Row::Fanout) {
        rows::fanout::run(&b, &mut report).await?;
    }
    if want(Row::Messages) {
        rows::messages::run(&b, &mut report).await?;
    }
    if want(Row::MessageReads) {
        rows::message_reads::run(&b, &mut report).await?;
    }
    if want(Row::Token) {
        rows::token::run(&b, &mut report).await?;
    }
    if want(Row::Delete) {
        rows::delete::run(&b, &mut report).await?;
    }
    if want(Row::Liveblocks) {
        rows::liveblocks::run(&b, &mut report).await?;
    }
    if want(Row::RoomToken) {
        rows::room_token::run(&b, &mut report).await?;
    }
    if want(Row::Reconcile) {
        rows::reconcile::run(&b, &mut report).await?;
    }
    report.push_peak_memory(&stack);

    let table = report.render(args.smoke);
    println!("{table}");
    if let Some(path) = args.write {
        std::fs::write(
            path,
            format!("# Benchmarks\n\nCommand: `scripts/bench`.\n\n{table}"),
        )?;
    }
    drop(b);
    stack.stop().await?;
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}

/// The development stack on release binaries next to this one, durable PostgreSQL, the bench's
/// settings and the `--env` overrides.
fn stack_config(args: &Args) -> Result<StackConfig> {
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
            ("LIVEBLOCKS_SWEEP_AFTER_SECS".into(), "0".into()),
            ("LIVEBLOCKS_BACKOFF_BASE_MS".into(), "100".into()),
            ("LIVEBLOCKS_BACKOFF_MAX_SECS".into(), "1".into()),
            ("DB_POOL_SIZE".into(), "32".into()),
            ("LOG_FORMAT".into(), "json".into()),
            // The read rows' members each read thousands of times a minute (200,000 calls over
            // 100 members in seconds); the quota is still checked on every call, and its cost
            // is in the figures, but it refuses none.
            ("USER_READS_PER_MINUTE".into(), "1000000".into()),
        ],
    );
    cfg.extra_env.insert(
        "identity-service",
        vec![
            ("DB_POOL_SIZE".into(), "32".into()),
            ("LOG_FORMAT".into(), "json".into()),
            // The same for `GetCurrentUser` in the reads row: checked on every call, refusing none.
            ("USER_READS_PER_MINUTE".into(), "1000000".into()),
        ],
    );
    // Production logging: JSON, one line per applied webhook.
    cfg.extra_env.insert(
        "webhook-gateway",
        vec![("LOG_FORMAT".into(), "json".into())],
    );
    if args.caches == Caches::Off {
        for (service, name) in [
            ("workspace-service", "ACCESS_CACHE_BYTES"),
            ("workspace-service", "CHANNEL_CACHE_BYTES"),
            ("identity-service", "USER_CACHE_BYTES"),
        ] {
            cfg.extra_env
                .entry(service)
                .or_default()
                .push((name.into(), "0".into()));
        }
    }
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
    Ok(cfg)
}

/// The rows' context: the scale of the run and the shared connections.
async fn bench<'a>(args: &Args, stack: &'a Stack) -> Result<Bench<'a>> {
    let s = if args.smoke {
        Scale {
            ingest: 300,
            reads: args.read_calls.unwrap_or(600),
            message_reads: args.read_calls.unwrap_or(600),
            verifies: 500,
            messages_per_channel: 450,
            messages: 600,
            items_per_room: 10,
            rooms: 20,
        }
    } else {
        Scale {
            ingest: 20000,
            reads: args.read_calls.unwrap_or(200_000),
            message_reads: args.read_calls.unwrap_or(20_000),
            verifies: 20000,
            messages_per_channel: 45000,
            messages: 20000,
            items_per_room: 400,
            rooms: 200,
        }
    };
    let c = args.concurrency;
    let mut conns = Vec::new();
    for _ in 0..c {
        conns.push(Direct::connect(&stack.identity_db).await?);
    }
    Ok(Bench {
        stack,
        users: 500.min(s.ingest),
        scale: s,
        concurrency: c,
        smoke: args.smoke,
        grpc_connections: args.grpc_connections,
        rooms_to_clean: if args.smoke { 200 } else { 10_000 },
        conns,
        wdb: pg(&stack.workspace_db).await?,
        cold: args.caches == Caches::Off,
    })
}
