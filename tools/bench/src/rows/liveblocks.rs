//! The Liveblocks clean-up of many rooms against a stand-in answering in 20 ms, against the
//! configured concurrency over that latency and bare HTTP clients on the same stand-in.

use crate::load::{Bench, until_empty};
use crate::report::Report;
use anyhow::{Context, Result};
use stand_ins::LiveblocksMode;
use std::time::{Duration, Instant};

/// Deletes `n` fresh rooms at the Liveblocks stand-in from `clients` concurrent bare HTTP
/// clients; rooms per second.
pub async fn raw_deletes(base_url: &str, n: usize, clients: usize) -> Result<f64> {
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

/// The Liveblocks clean-up row.
pub async fn run(b: &Bench<'_>, report: &mut Report) -> Result<()> {
    let (stack, rooms_to_clean) = (b.stack, b.rooms_to_clean);
    let rows = &mut report.rows;
    let live = stack.liveblocks.as_ref().context("liveblocks stand-in")?;
    // 5. Liveblocks clean-up of N rooms against a stand-in answering in 20 ms.
    live.set_latency(Duration::from_millis(20));
    live.set_mode(LiveblocksMode::Up);
    let before = live.deleted().len();
    b.wdb.execute(
        "INSERT INTO liveblocks_cleanup_jobs (room_id) SELECT 'doc:' || gen_random_uuid() FROM generate_series(1, $1::int)",
        &[&rooms_to_clean],
    )
    .await?;
    let t = Instant::now();
    until_empty(
        &b.wdb,
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
        format!("Liveblocks clean-up of {rooms_to_clean} rooms, stand-in at 20 ms, concurrency 8"),
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
    Ok(())
}
