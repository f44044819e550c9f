//! Authenticated reads (`GetCurrentUser`, RS256) against a SELECT by primary key, and the gRPC
//! floor (a health check on the same connections).

use crate::load::{Bench, Direct, load, settle};
use crate::probes::{BatchProbe, CpuProbe};
use crate::report::Report;
use anyhow::{Context, Result};
use std::sync::Arc;
use token_auth::signing::SigningKey;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use vbase_proto::identity::v1 as idp;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;
use vbase_stack::dev_user_claims;

/// The reads row and the gRPC-floor reference row.
pub async fn run(b: &Bench<'_>, report: &mut Report) -> Result<()> {
    let (stack, s, c, users) = (b.stack, &b.scale, b.concurrency, b.users);
    let (rows, cpu, batching) = (&mut report.rows, &mut report.cpu, &mut report.batching);
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
    for _ in 0..b.grpc_connections.unwrap_or(c).clamp(1, c) {
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
    settle(&b.conns[0].db).await?;
    let batches = BatchProbe::start(stack, "identity_lookup_batch_size").await;
    let probe = CpuProbe::start(stack);
    let ours = load(
        clients,
        s.reads,
        move |mut cl: IdentityServiceClient<Channel>, i| {
            let tok = toks[i % toks.len()].clone();
            async move {
                cl.get_current_user(service_harness::bearer(idp::GetCurrentUserRequest {}, &tok))
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
    settle(&b.conns[0].db).await?;
    let probe = CpuProbe::start(stack);
    let base = load(b.conns.clone(), s.reads, move |d: Direct, i| async move {
        d.db.query_opt(&d.select, &[&format!("user_b{}", i % users)])
            .await
            .is_ok()
    })
    .await;
    cpu.push(format!("read, baseline: {}", probe.per_call(s.reads)));
    // What one gRPC hop costs by itself: the health check (no token, no database) on the
    // same connections at the same concurrency; no read through gRPC can beat it.
    let health: Vec<_> = channels.into_iter().map(HealthClient::new).collect();
    let probe = CpuProbe::start(stack);
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
        format!(
            "authenticated read `GetCurrentUser` (RS256), concurrency {c}, {}",
            if b.cold {
                "cold (user cache off: every read a miss)"
            } else {
                "warm (user cache on: 500 users reading repeatedly)"
            }
        ),
        format!(
            "{:.0} RPS, p99 {:.1} ms ({} errors)",
            ours.rate(),
            ours.pct(0.99),
            ours.errors
        ),
        format!("{:.0} SELECT/s, p99 {:.1} ms", base.rate(), base.pct(0.99)),
        format!(
            "{:.2}x (goal >= {})",
            ours.rate() / base.rate(),
            if b.cold { "0.5" } else { "0.8" }
        ),
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
    Ok(())
}
