//! The hourly prune of the change log, a worker of its own: the hub's loop keeps handling
//! notifications meanwhile. What is pruned goes by number ([`changes::prune`]), so a resume
//! token is either answered from its next change or refused, never with a gap.

use crate::domain::changes;
use service_runtime::Pool;
use std::future::Future;
use std::time::Duration;

/// How often the change log is pruned.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Prunes changes older than `retention` every `every` (the first time at once) until `stop`.
pub async fn prune_loop(
    pool: Pool,
    retention: Duration,
    every: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let pruned = async {
            let mut conn = pool.get().await?;
            anyhow::Ok(changes::prune(&mut conn, retention).await?)
        };
        tokio::select! {
            r = pruned => match r {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "change log pruned"),
                Err(e) => {
                    service_runtime::db::classify_error(&e);
                    tracing::warn!(error = %e, "pruning the change log failed; tried again in an hour")
                }
            },
            _ = &mut stop => return,
        }
    }
}
