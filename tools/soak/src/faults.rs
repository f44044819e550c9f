//! Faults on a schedule drawn from the seed: SIGKILL and restart of each process, PostgreSQL
//! stopped immediately (as a crash) and restarted, Liveblocks unavailable, rate-limiting or too
//! slow for stretches, and reconcile runs while Clerk's API answers 429 and 5xx.

use anyhow::Result;
use ephemeral_postgres::PgCluster;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use stand_ins::{ClerkApiStandIn, LiveblocksMode, LiveblocksStandIn};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use vbase_stack::{Stack, Which};

/// One fault.
#[derive(Debug, Clone)]
pub enum Fault {
    /// SIGKILL, then a restart after `down`.
    Kill(Which, Duration),
    /// Immediate shutdown of PostgreSQL, restart after `down`.
    Postgres(Duration),
    /// Liveblocks answers 503 / 429 with `Retry-After` / too late, for `span`.
    Liveblocks(LiveblocksMode, Option<Duration>, Duration),
    /// A reconcile run while Clerk's API answers 429 to the first requests and, when `fail`, 503
    /// to list requests after a few.
    Reconcile { rate_limited: u32, fail: bool },
}

impl Fault {
    /// The row of the report it counts in.
    pub fn label(&self) -> String {
        match self {
            Fault::Kill(w, _) => format!("SIGKILL {}", w.binary()),
            Fault::Postgres(_) => "PostgreSQL immediate stop".into(),
            Fault::Liveblocks(LiveblocksMode::Down, ..) => "Liveblocks 503".into(),
            Fault::Liveblocks(LiveblocksMode::RateLimited { .. }, ..) => {
                "Liveblocks 429 Retry-After".into()
            }
            Fault::Liveblocks(_, Some(_), _) => "Liveblocks timeouts".into(),
            Fault::Liveblocks(..) => "Liveblocks other".into(),
            Fault::Reconcile { .. } => "reconcile under Clerk API 429/503".into(),
        }
    }
}

/// How many of each.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub kills: usize,
    pub postgres: usize,
    pub liveblocks: usize,
    pub reconciles: usize,
}

/// The schedule: (offset from the start, fault), in order, all within `span`.
pub fn schedule(seed: u64, span: Duration, n: Counts) -> Vec<(Duration, Fault)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfa017);
    let mut faults = Vec::new();
    let who = [Which::Identity, Which::Workspace, Which::Gateway];
    for i in 0..n.kills {
        let down = Duration::from_millis(rng.random_range(100..3000));
        faults.push(Fault::Kill(who[i % 3], down));
    }
    for _ in 0..n.postgres {
        faults.push(Fault::Postgres(Duration::from_millis(
            rng.random_range(500..4000),
        )));
    }
    for i in 0..n.liveblocks {
        let span = Duration::from_millis(rng.random_range(3000..15000));
        faults.push(match i % 3 {
            0 => Fault::Liveblocks(LiveblocksMode::Down, None, span),
            1 => Fault::Liveblocks(
                LiveblocksMode::RateLimited {
                    retry_after_secs: rng.random_range(1..3),
                },
                None,
                span,
            ),
            _ => Fault::Liveblocks(LiveblocksMode::Up, Some(Duration::from_secs(3)), span),
        });
    }
    for i in 0..n.reconciles {
        faults.push(Fault::Reconcile {
            rate_limited: rng.random_range(1..4),
            fail: i % 2 == 1,
        });
    }
    faults.shuffle(&mut rng);
    // Evenly spread over the span (jittered), never two at the same moment.
    let slot = span.as_secs_f64() / (faults.len() + 1) as f64;
    faults
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let at = slot * (i as f64 + 0.5 + rng.random::<f64>() * 0.5);
            (Duration::from_secs_f64(at), f)
        })
        .collect()
}

/// What the fault loop touches.
pub struct Targets {
    pub stack: Arc<Mutex<Stack>>,
    pub pg: Arc<PgCluster>,
    pub liveblocks: Arc<LiveblocksStandIn>,
    pub clerk_api: Arc<ClerkApiStandIn>,
    pub live: Arc<crate::deliver::Live>,
}

/// Runs the schedule in three concurrent lanes (kills; PostgreSQL and Liveblocks; reconcile
/// runs), so faults overlap; returns the faults injected, by label, and the reconcile exit codes.
pub async fn run_lanes(
    t: &Targets,
    schedule: Vec<(Duration, Fault)>,
) -> Result<(BTreeMap<String, u64>, Vec<i32>)> {
    let lane = |pick: fn(&Fault) -> bool| -> Vec<(Duration, Fault)> {
        schedule.iter().filter(|(_, f)| pick(f)).cloned().collect()
    };
    let kills = lane(|f| matches!(f, Fault::Kill(..)));
    let outages = lane(|f| matches!(f, Fault::Postgres(_) | Fault::Liveblocks(..)));
    let reconciles = lane(|f| matches!(f, Fault::Reconcile { .. }));
    let (a, b, c) = tokio::join!(run(t, kills), run(t, outages), run(t, reconciles));
    let mut done = BTreeMap::new();
    let mut codes = Vec::new();
    for (d, r) in [a?, b?, c?] {
        for (k, v) in d {
            *done.entry(k).or_default() += v;
        }
        codes.extend(r);
    }
    Ok((done, codes))
}

/// Runs a schedule in order; returns the faults injected, by label, and the reconcile exit codes.
pub async fn run(
    t: &Targets,
    schedule: Vec<(Duration, Fault)>,
) -> Result<(BTreeMap<String, u64>, Vec<i32>)> {
    let start = Instant::now();
    let mut done = BTreeMap::new();
    let mut reconciles = Vec::new();
    for (at, f) in schedule {
        if t.live.stop.load(Relaxed) {
            break;
        }
        tokio::time::sleep_until((start + at).into()).await;
        eprintln!(
            "soak: fault at {:>6.1}s: {f:?}",
            start.elapsed().as_secs_f64()
        );
        match &f {
            Fault::Kill(w, down) => {
                t.stack.lock().await.kill(*w);
                tokio::time::sleep(*down).await;
                t.stack.lock().await.spawn(*w)?;
            }
            Fault::Postgres(down) => {
                let pg = Arc::clone(&t.pg);
                tokio::task::spawn_blocking(move || pg.crash()).await??;
                tokio::time::sleep(*down).await;
                let pg = Arc::clone(&t.pg);
                tokio::task::spawn_blocking(move || {
                    pg.resume()?;
                    pg.wait_ready(Duration::from_secs(60))
                })
                .await??;
            }
            Fault::Liveblocks(mode, latency, span) => {
                t.liveblocks.set_mode(mode.clone());
                if let Some(l) = latency {
                    t.liveblocks.set_latency(*l);
                }
                tokio::time::sleep(*span).await;
                t.liveblocks.set_mode(LiveblocksMode::Up);
                t.liveblocks.set_latency(Duration::ZERO);
            }
            Fault::Reconcile { rate_limited, fail } => {
                t.clerk_api.rate_limit_next(*rate_limited, 1);
                if *fail {
                    t.clerk_api.fail_lists_after(Some(2));
                }
                let (code, _) = reconcile(&t.stack).await?;
                t.clerk_api.fail_lists_after(None);
                reconciles.push(code);
            }
        }
        *done.entry(f.label()).or_default() += 1;
    }
    Ok((done, reconciles))
}

/// `webhook-gateway reconcile` once, deleting beyond the budget (a soak deletes a large share
/// of what it created); returns its exit code and what it repaired (`kind c/u/d`), and
/// prints its last lines when it fails.
pub async fn reconcile(stack: &Mutex<Stack>) -> Result<(i32, String)> {
    let mut c = tokio::process::Command::from(stack.lock().await.reconcile_command());
    c.args([
        "--json",
        "--instance",
        vbase_stack::DEV_CLERK_INSTANCE,
        "--allow-mass-delete",
    ])
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(600), c.output())
        .await
        .map_err(|_| anyhow::anyhow!("reconcile ran over 10 minutes"))??;
    let code = out.status.code().unwrap_or(-1);
    if code != 0 {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        eprintln!("soak: reconcile exited {code}: {}", tail.join(" | "));
    }
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let repaired = summary["kinds"]
        .as_array()
        .map(|kinds| {
            kinds
                .iter()
                .map(|k| {
                    format!(
                        "{} {}/{}/{}",
                        k["kind"].as_str().unwrap_or("?"),
                        k["created"],
                        k["updated"],
                        k["deleted"]
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    Ok((code, repaired))
}
