//! The hourly prune of the change log, a worker of its own: the hub's loop keeps handling
//! notifications meanwhile. What is pruned goes by number ([`changes::prune`]), so a resume
//! token is either answered from its next change or refused, never with a gap. The same round
//! removes the creates' request ids past their window ([`requests::WINDOW`]).

use crate::domain::{changes, requests};
use service_runtime::Pool;
use std::future::Future;
use std::time::Duration;

/// How often the change log is pruned.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Prunes changes older than `retention`, and request ids older than [`requests::WINDOW`],
/// every `every` (the first time at once) until `stop`.
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
            let changes = changes::prune(&mut conn, retention).await;
            // One failing does not hold the other back.
            let requests = requests::prune(&mut conn, requests::WINDOW).await;
            anyhow::Ok((changes, requests))
        };
        tokio::select! {
            r = pruned => match r {
                Ok((changes, requests)) => {
                    report("change log", changes);
                    report("create request ids", requests);
                }
                Err(e) => {
                    service_runtime::db::classify_error(&e);
                    tracing::warn!(error = %e, "no connection to prune the change log and request ids; tried again in an hour")
                }
            },
            _ = &mut stop => return,
        }
    }
}

/// Logs what one prune of `what` did.
fn report(what: &str, pruned: diesel::QueryResult<usize>) {
    match pruned {
        Ok(0) => {}
        Ok(n) => tracing::info!(pruned = n, "{what} pruned"),
        Err(e) => {
            let e = anyhow::Error::from(e);
            service_runtime::db::classify_error(&e);
            tracing::warn!(error = %e, "pruning the {what} failed; tried again in an hour")
        }
    }
}
