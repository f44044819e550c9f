//! `vbase-soak [--seed N] [--minutes M] [--events N]`: a chaos soak of the real stack.
//!
//! A seeded history of a Clerk instance ([`model`]) is served by the Backend API stand-in as
//! Clerk's truth and delivered to the gateway like Svix ([`deliver`]) while users' calls run
//! ([`traffic`]) and faults are injected on a schedule from the same seed ([`faults`]). Then
//! it converges (deliveries drained, one reconcile run, purge and Liveblocks queues empty) and
//! checks everything against the model ([`check`]), printing the table ([`report`]); exit 1 on
//! any loss, double, divergence, leftover or room never deleted. The history, the delivery
//! plan and the fault schedule replay exactly from `--seed`; what the users' calls meet
//! depends on timing.

use anyhow::{Context, Result};
use clap::Parser;
use ephemeral_postgres::{PgCluster, PgClusterOptions};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use token_auth::signing::{ServiceTokenMinter, SigningKey};
use tokio::sync::Mutex;
use vbase_stack::{Stack, StackConfig};

mod check;
mod deliver;
mod faults;
mod model;
mod report;
mod traffic;
mod watch;

#[derive(Parser, Debug)]
#[command(about = "Chaos soak: a seeded Clerk history through faults, checked against the model")]
struct Args {
    /// Replays a run exactly (history, delivery plan, faults); random when absent (printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long the events are spread over (faults happen within it).
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// Clerk events in the history.
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// SIGKILLs (turn by turn identity-service, workspace-service, webhook-gateway); default
    /// 3 per minute.
    #[arg(long)]
    kills: Option<usize>,
    /// PostgreSQL immediate stops; default one per 5 minutes, at least 1.
    #[arg(long)]
    pg_restarts: Option<usize>,
    /// Liveblocks outages (503, 429 with Retry-After, timeouts in turn); default one per 3
    /// minutes, at least 1.
    #[arg(long)]
    liveblocks_outages: Option<usize>,
    /// Reconcile runs during the load while Clerk's API answers 429/503; default one per 5
    /// minutes, at least 1.
    #[arg(long)]
    reconciles: Option<usize>,
    /// Concurrent Svix senders.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Users' calls per second.
    #[arg(long, default_value_t = 10.0)]
    traffic_rate: f64,
    /// Watchers (half follow a workspace, half its first channel).
    #[arg(long, default_value_t = 6)]
    watchers: usize,
    /// Where the report goes (`soak-SEED.md`, `soak-SEED.json`).
    #[arg(long, default_value = "target/soak")]
    out: std::path::PathBuf,
}

/// Settings that compress the services' retry clocks to the soak's scale.
fn stack_config(
    args: &Args,
    database_url: String,
    state: std::path::PathBuf,
) -> Result<StackConfig> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary dir")?
        .to_path_buf();
    let mut cfg = StackConfig::dev(bin_dir, state);
    cfg.database_url = Some(database_url);
    let env = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    cfg.extra_env.insert(
        "workspace-service",
        env(&[
            ("LIVEBLOCKS_TIMEOUT_SECS", "2"),
            ("LIVEBLOCKS_LEASE_SECS", "7"),
            ("LIVEBLOCKS_POLL_MS", "50"),
            ("LIVEBLOCKS_SWEEP_AFTER_SECS", "0"),
            ("LIVEBLOCKS_BACKOFF_BASE_MS", "100"),
            ("LIVEBLOCKS_BACKOFF_MAX_SECS", "2"),
            ("PURGE_LEASE_SECS", "5"),
            ("PURGE_POLL_MS", "100"),
            ("LOG_FORMAT", "json"),
        ]),
    );
    cfg.extra_env
        .insert("identity-service", env(&[("LOG_FORMAT", "json")]));
    cfg.extra_env.insert(
        "webhook-gateway",
        env(&[
            ("LOG_FORMAT", "json"),
            ("CLERK_API_MAX_REQUESTS", "1000"),
            ("CLERK_API_RETRY_BASE_MS", "100"),
            ("CLERK_API_MAX_RETRIES", "3"),
        ]),
    );
    let _ = args;
    Ok(cfg)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let command = format!(
        "scripts/soak --seed {seed} --minutes {} --events {}{} --senders {} --traffic-rate {} --watchers {}",
        args.minutes,
        args.events,
        [
            ("kills", args.kills),
            ("pg-restarts", args.pg_restarts),
            ("liveblocks-outages", args.liveblocks_outages),
            ("reconciles", args.reconciles)
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!(" --{k} {v}")))
        .collect::<String>(),
        args.senders,
        args.traffic_rate,
        args.watchers
    );
    eprintln!("soak: seed {seed} ({command})");
    let failed = run(&args, seed, command).await?;
    std::process::exit(i32::from(failed));
}

async fn run(args: &Args, seed: u64, command: String) -> Result<bool> {
    let span = Duration::from_secs_f64(args.minutes * 60.0);
    let minutes = args.minutes.max(0.0);
    let counts = faults::Counts {
        kills: args.kills.unwrap_or((minutes * 3.0).ceil() as usize),
        postgres: args
            .pg_restarts
            .unwrap_or(((minutes / 5.0) as usize).max(1)),
        liveblocks: args
            .liveblocks_outages
            .unwrap_or(((minutes / 3.0) as usize).max(1)),
        reconciles: args.reconciles.unwrap_or(((minutes / 5.0) as usize).max(1)),
    };
    let state = std::env::temp_dir().join(format!("vbase-soak-{}", std::process::id()));
    let pg = tokio::task::spawn_blocking(|| {
        let c = PgCluster::start(PgClusterOptions {
            durable: true,
            ..PgClusterOptions::default()
        })?;
        c.wait_ready(Duration::from_secs(30))?;
        Ok::<_, anyhow::Error>(c)
    })
    .await??;
    let pg = Arc::new(pg);
    eprintln!(
        "soak: starting the stack (logs in {})",
        state.join("logs").display()
    );
    let mut stack = Stack::start(stack_config(args, pg.url("postgres"), state.clone())?).await?;
    let clerk_api = Arc::new(stack.clerk_api.take().context("Clerk API stand-in")?);
    let liveblocks = Arc::new(stack.liveblocks.take().context("Liveblocks stand-in")?);
    // The development data is not part of the model.
    for u in ["user_local", "user_alice", "user_bob"] {
        clerk_api.remove_user(u);
    }
    clerk_api.remove_org("org_local");
    for m in ["orgmem_local0", "orgmem_local1"] {
        clerk_api.remove_membership(m);
    }
    let minter = Arc::new(ServiceTokenMinter::new(
        SigningKey::from_pem(&std::fs::read_to_string(&stack.service_key_file)?)?,
        "vbase-internal",
        vbase_stack::STACK_CALLER,
        Duration::from_secs(600),
    ));
    let (identity_db, workspace_db) = (stack.identity_db.clone(), stack.workspace_db.clone());
    let (gateway_url, secret) = (
        stack.state.gateway_url.clone(),
        stack.state.webhook_secret.clone(),
    );
    let workspace_addr = stack.workspace_addr;
    let stack = Arc::new(Mutex::new(stack));

    let history = model::generate(seed, args.events, token_auth::signing::now_secs() * 1000);
    let events = Arc::new(history.events);
    let live = Arc::new(deliver::Live::default());
    let schedule = faults::schedule(seed, span, counts);
    let started = Instant::now();
    let plan = deliver::Plan {
        senders: args.senders,
        seed,
        span,
        ..deliver::Plan::default()
    };
    let delivery = tokio::spawn(deliver::run(
        Arc::clone(&events),
        Arc::clone(&clerk_api),
        Arc::clone(&live),
        gateway_url,
        secret,
        plan,
    ));
    let traffic = tokio::spawn(traffic::run(
        workspace_addr,
        Arc::clone(&minter),
        Arc::clone(&live),
        seed,
        args.traffic_rate,
    ));
    // Watchers follow organizations that exist at the end, each from when Clerk created it.
    let watch_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut watchers = Vec::new();
    {
        let orgs: Vec<&String> = history.truth.orgs.keys().collect();
        let mut hot = live.hot.lock().unwrap();
        for i in 0..args.watchers.min(orgs.len() * 2) {
            let org = orgs[(seed as usize).wrapping_add(i / 2 * 7919) % orgs.len()].clone();
            hot.push(org.clone());
            let (live, stop, minter) = (
                Arc::clone(&live),
                Arc::clone(&watch_stop),
                Arc::clone(&minter),
            );
            watchers.push(tokio::spawn(async move {
                while !live.orgs.lock().unwrap().contains(&org) {
                    if stop.load(Relaxed) {
                        return watch::Seen {
                            org,
                            ..Default::default()
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                watch::run(
                    workspace_addr,
                    minter,
                    org,
                    i % 2 == 1,
                    seed ^ i as u64,
                    stop,
                )
                .await
            }));
        }
    }
    let targets = faults::Targets {
        stack: Arc::clone(&stack),
        pg: Arc::clone(&pg),
        liveblocks: Arc::clone(&liveblocks),
        clerk_api: Arc::clone(&clerk_api),
        live: Arc::clone(&live),
    };
    let progress = tokio::spawn({
        let live = Arc::clone(&live);
        let n = events.len();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                eprintln!(
                    "soak: {:>5.0}s: {} of {n} events emitted, {} attempts",
                    started.elapsed().as_secs_f64(),
                    live.emitted.load(Relaxed),
                    live.attempts.load(Relaxed)
                );
            }
        }
    });
    // Bounded: the faults run within the span, deliveries end at most a retry schedule after.
    let limit = span + Duration::from_secs(300);
    let faulted = tokio::time::timeout(limit, faults::run_lanes(&targets, schedule)).await;
    let outcomes = tokio::time::timeout(limit, delivery).await;
    live.stop.store(true, Relaxed);
    let (fault_counts, reconciles) = faulted.context("the fault loop overran its bound")??;
    let outcomes = outcomes.context("deliveries overran their bound")??;
    let record = traffic.await?;
    let duration = started.elapsed();

    // Converge: every process up, Clerk's API answering, one reconcile run, queues empty.
    let t = Instant::now();
    clerk_api.rate_limit_next(0, 0);
    clerk_api.fail_lists_after(None);
    stack
        .lock()
        .await
        .wait_ready(Duration::from_secs(60))
        .await?;
    wait_queues_empty(&workspace_db, Duration::from_secs(300)).await?;
    // What webhooks alone left: only rows a withheld or given-up delivery touched may differ.
    let unsent: BTreeSet<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.withheld || (o.gave_up && !o.delivered))
        .map(|(i, _)| i)
        .collect();
    let (webhook_gaps, differed) = check::before_reconcile(
        &identity_db,
        &workspace_db,
        &history.truth,
        &events,
        &unsent,
    )
    .await?;
    let (final_reconcile, repaired) = faults::reconcile(&stack).await?;
    wait_queues_empty(&workspace_db, Duration::from_secs(300)).await?;
    let converge = t.elapsed();
    progress.abort();
    // The watchers catch up with the last changes, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch_stop.store(true, Relaxed);
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(w.await?);
    }

    let findings = check::check(
        &identity_db,
        &workspace_db,
        &history.truth,
        &events,
        &record,
        &liveblocks.deleted(),
        &liveblocks.not_found(),
    )
    .await?;
    let mut findings = findings;
    check::watchers(&workspace_db, &history.truth, &seen, &mut findings).await?;
    findings.diverged.extend(
        webhook_gaps
            .into_iter()
            .map(|d| format!("before the final reconcile, no delivery withheld: {d}")),
    );
    let summary = report::Summary {
        seed,
        command,
        events: events.len(),
        outcomes: &outcomes,
        faults: fault_counts,
        reconciles,
        final_reconcile,
        differed_before_reconcile: differed,
        repaired,
        watcher_reconnects: seen.iter().map(|w| w.reconnects).sum(),
        traffic_calls: record.calls,
        traffic_failed: record.failed,
        duration,
        converge,
        findings: &findings,
    };
    let md = summary.markdown();
    println!("{md}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join(format!("soak-{seed}.md")), &md)?;
    std::fs::write(
        args.out.join(format!("soak-{seed}.json")),
        serde_json::to_string_pretty(&summary.json())?,
    )?;
    let failed = findings.failed() || final_reconcile != 0;
    drop(targets);
    let stack = Arc::try_unwrap(stack)
        .map_err(|_| anyhow::anyhow!("stack still shared"))?
        .into_inner();
    if failed {
        eprintln!(
            "soak: FAILED; logs kept in {}",
            state.join("logs").display()
        );
        drop(stack);
    } else {
        stack.stop().await?;
        let _ = std::fs::remove_dir_all(&state);
    }
    Ok(failed)
}

/// Waits until no purge job and no Liveblocks deletion is queued (a dead job stops the wait).
async fn wait_queues_empty(workspace_db: &str, timeout: Duration) -> Result<()> {
    let (c, conn) = tokio_postgres::connect(workspace_db, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let deadline = Instant::now() + timeout;
    loop {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM purge_jobs) + (SELECT count(*) FROM liveblocks_cleanup_jobs),
                        (SELECT count(*) FROM purge_jobs WHERE dead_at IS NOT NULL)
                      + (SELECT count(*) FROM liveblocks_cleanup_jobs WHERE dead_at IS NOT NULL)",
                &[],
            )
            .await?;
        let (queued, dead): (i64, i64) = (r.get(0), r.get(1));
        if queued == 0 {
            return Ok(());
        }
        if dead > 0 || Instant::now() > deadline {
            eprintln!("soak: {queued} jobs still queued ({dead} dead)");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
