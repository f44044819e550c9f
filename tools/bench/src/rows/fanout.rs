//! Live fan-out: many `WatchChannel` streams on one channel, messages posted at a rate; latency
//! from each post's answer to its arrival at every watcher, and memory per idle stream.

use crate::load::{Bench, Stats, bench_workspace, drop_bench_workspace, pg, stack_signers};
use crate::probes::vm_rss_kib;
use crate::report::Report;
use anyhow::{Context, Result};
use futures::future::join_all;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;
use vbase_stack::{Stack, Which, dev_user_claims};

pub struct Fanout {
    p50: f64,
    p99: f64,
    pub arrivals: usize,
    pub kib_per_stream: f64,
}

/// `watchers` streams on one channel (200 per HTTP/2 connection), then `posts` messages at
/// `rate` per second; latencies from each post's answer to its arrival at every watcher.
pub async fn fanout(stack: &Stack, watchers: usize, posts: usize, rate: f64) -> Result<Fanout> {
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
                        request_id: String::new(),
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

/// The fan-out row.
pub async fn run(b: &Bench<'_>, report: &mut Report) -> Result<()> {
    let stack = b.stack;
    let rows = &mut report.rows;
    // 7. Live fan-out: watchers of one channel, messages posted at 100/s; latency from each
    //    post's answer to its arrival at every watcher, and memory per idle stream.
    let (watchers, posts) = if b.smoke { (50, 20) } else { (1000, 500) };
    let f = fanout(stack, watchers, posts, 100.0).await?;
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
    Ok(())
}
