//! What a reconcile run shares across kinds: the run's identity and start, the pipelined
//! listing of Clerk's pages, the writes, the deletion sweep and its budget, and the listing
//! order's positions. What each page's items become is [`super::items`].

use super::items::{Change, Write, usable};
use super::listing::{Listing, Stretch, pages};
use super::retry::Retrier;
use super::summary::{KindSummary, MISSING_SAMPLE};
use super::{Plan, RunError};
use crate::clerk::{Command, Origin};
use crate::clerk_api::{ClerkBackend, Unparsed};
use crate::forward::{Downstream, ForwardError, failure};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use std::time::Duration;
use uuid::Uuid;
use vbase_proto::identity::v1 as idp;
use vbase_proto::workspace::v1 as wsp;

pub(super) use super::listing::Positioned;

/// Candidates asked for per `ListUnseen*` call.
const CANDIDATE_PAGE: i32 = 500;
/// Writes in flight at once.
const WRITES_IN_FLIGHT: usize = 32;
/// Pages compared and applied at once.
const PAGES_IN_FLIGHT: usize = 4;
/// A progress line every this many pages.
const PAGES_PER_PROGRESS_LINE: u64 = 20;
/// The least deletion budget of a kind, whatever the number held.
pub const MIN_BUDGET: u64 = 25;

/// What a run shares across kinds.
pub(super) struct Ctx<'a, C> {
    pub(super) clerk: &'a C,
    pub(super) down: &'a Downstream,
    pub(super) plan: &'a Plan,
    pub(super) run: Uuid,
    /// When the run started: only what was created here before it can be deleted, the
    /// `event_time` of every write (the time Clerk's listing said it), and the date of every
    /// membership deletion (no change Clerk made before it wins over the deletion).
    pub(super) started_at: prost_types::Timestamp,
    /// Every call to the services goes through it: repeated when it failed for a moment.
    pub(super) retry: Retrier,
}

/// Whether a sweep may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sweep {
    /// Confirm each candidate with Clerk and delete the ones gone (within the budget).
    Delete,
    /// Deletion is refused for the run: count the candidates only.
    CountOnly,
}

/// One page of a service's deletion candidates; on the first page, the candidates in all and
/// the live resources of the kind held.
pub(super) struct Candidates<K> {
    pub(super) page: Vec<K>,
    pub(super) total: i64,
    pub(super) held: i64,
}

/// This machine's time, to the millisecond.
pub(super) fn now() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    vbase_proto::timestamp_from_millis(now.as_millis() as i64)
}

impl<'a, C: ClerkBackend> Ctx<'a, C> {
    pub(super) fn new(clerk: &'a C, down: &'a Downstream, plan: &'a Plan) -> Self {
        Self {
            clerk,
            down,
            plan,
            run: Uuid::now_v7(),
            started_at: now(),
            retry: Retrier::new(plan.retry),
        }
    }

    /// The event id of one write: names the run, the action and the resource.
    pub(super) fn event_id(&self, action: &str, id: &str) -> String {
        format!("reconcile-{}-{action}-{id}", self.run)
    }

    /// The origin of a command of this run: said at the run's start, by no webhook's instance.
    pub(super) fn origin<'e>(&self, event_id: &'e str) -> Origin<'e> {
        Origin {
            event_id,
            event_time: Some(self.started_at),
            instance_id: "",
        }
    }

    pub(super) fn unseen(&self, after: String) -> idp::ListUnseenRequest {
        idp::ListUnseenRequest {
            run_id: self.run.to_string(),
            started_at: Some(self.started_at),
            after,
            limit: CANDIDATE_PAGE,
            scope_id: self.plan.scope.id().to_owned(),
        }
    }

    pub(super) fn unseen_ws(&self, after: String) -> wsp::ListUnseenRequest {
        let r = self.unseen(after);
        wsp::ListUnseenRequest {
            run_id: r.run_id,
            started_at: r.started_at,
            after: r.after,
            limit: r.limit,
            scope_id: r.scope_id,
        }
    }

    /// Sends the writes (or, in a dry run, only counts them). A refusal of one item is
    /// counted and logged; a write that failed for a moment is repeated ([`Retrier`]); a
    /// service that still cannot be reached, or fails otherwise, stops the run.
    pub(super) async fn apply(
        &self,
        s: &mut KindSummary,
        writes: Vec<Write>,
    ) -> Result<(), RunError> {
        if self.plan.dry_run {
            writes.iter().for_each(|(c, _, _)| c.count(s));
            return Ok(());
        }
        let results: Vec<_> = futures::stream::iter(writes)
            .map(|(change, id, cmd)| async move {
                let name = command_name(&cmd);
                let r = self
                    .retry
                    .call(name, async |attempt| {
                        self.down.send(cmd.clone()).await.map(|o| (o, attempt))
                    })
                    .await;
                (change, id, r)
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        for (change, id, r) in results {
            match r {
                Ok(("applied", _)) => change.count(s),
                // A repeat answered DUPLICATE: an earlier attempt of this very write committed
                // and its answer was lost (the event id names this run, the action and the
                // resource, so nothing else sent it). Counted as the change: the comparison
                // just found the resource missing or older, only a webhook in between could
                // have made that attempt stale.
                Ok(("duplicate", attempt)) if attempt > 1 => change.count(s),
                Ok(_) => s.stale += 1,
                Err(ForwardError::Rejected(reason)) => {
                    s.refused += 1;
                    tracing::warn!(
                        kind = s.kind,
                        id,
                        reason,
                        "a service refused a listed resource"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Pages `listing` oldest first. Fetching runs ahead of handling, and up to
    /// [`PAGES_IN_FLIGHT`] pages are compared and applied at once (the order of their writes
    /// does not matter: the services' guard orders every write), so a round trip to a service
    /// does not add to the time of each page. Their results are summed in page order.
    pub(super) async fn each_page<T, F>(
        &self,
        s: &mut KindSummary,
        listing: Listing<'_>,
        apply: F,
    ) -> Result<(), RunError>
    where
        T: DeserializeOwned + Send + 'static,
        T: Positioned,
        F: AsyncFn(&mut KindSummary, Vec<T>, Stretch) -> Result<(), RunError>,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel(PAGES_IN_FLIGHT);
        let producer = pages::<T, C>(self.clerk, listing, self.plan.page_size, tx);
        let progress = indicatif::ProgressBar::new_spinner();
        progress.enable_steady_tick(Duration::from_millis(200));
        let kind = s.kind.clone();
        let handle = |page: Result<(Vec<Result<T, Unparsed>>, Stretch), RunError>| {
            let (apply, kind) = (&apply, kind.clone());
            async move {
                let mut d = KindSummary {
                    kind,
                    ..KindSummary::default()
                };
                let (page, stretch) = page?;
                let items = usable(&mut d, page);
                d.listed = items.len() as u64;
                apply(&mut d, items, stretch).await?;
                Ok::<_, RunError>(d)
            }
        };
        let consumer = async {
            // The stream owns the receiver: a consumer that stops closes the channel.
            let pages = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
            // Results are taken in page order: a page that fails (its listing or its writes) is
            // reported after every earlier page was counted, whichever finished first.
            let mut handled = pages.map(handle).buffered(PAGES_IN_FLIGHT);
            let mut n = 0u64;
            while let Some(d) = handled.next().await {
                s.add(&d?);
                n += 1;
                progress.set_message(format!("{}: {} listed", s.kind, s.listed));
                if n.is_multiple_of(PAGES_PER_PROGRESS_LINE) {
                    tracing::info!(
                        kind = s.kind,
                        listed = s.listed,
                        created = s.created,
                        updated = s.updated,
                        "reconcile progress"
                    );
                }
            }
            Ok::<_, RunError>(())
        };
        // The consumer ends when the listing does (the producer dropped its sender) or at the
        // first page that failed. Then the producer, which only reads Clerk, is dropped
        // wherever it waits (a send to a channel nobody reads any more, a request, a
        // Retry-After): waiting for it could take long, or, on a full channel, forever.
        let result = {
            let mut consumer = std::pin::pin!(consumer);
            tokio::select! {
                r = &mut consumer => r,
                () = producer => consumer.await,
            }
        };
        progress.finish_and_clear();
        result?;
        s.listing_complete = true;
        Ok(())
    }

    /// Pages the service's deletion candidates (`list`, after a key). The first page says how
    /// many there are: more than the kind's budget (RECONCILE_MAX_DELETES, else 1 % of what
    /// was held when the run started), and nothing of this kind is deleted (unless
    /// `--allow-mass-delete`); the refusal is returned. Else each is confirmed with Clerk
    /// (`gone`) and those Clerk no longer has are deleted (`delete`, given the time Clerk's
    /// confirming answer came back); the others are counted kept. With [`Sweep::CountOnly`]
    /// only the count is taken.
    pub(super) async fn sweep<K>(
        &self,
        s: &mut KindSummary,
        mode: Sweep,
        list: impl AsyncFn(String) -> Result<Candidates<K>, RunError>,
        key: impl Fn(&K) -> String,
        gone: impl AsyncFn(&K) -> Result<bool, RunError>,
        delete: impl Fn(&K, &str, prost_types::Timestamp) -> Command,
    ) -> Result<Option<String>, RunError> {
        let first = list(String::new()).await?;
        s.missing = first.total.max(0) as u64;
        s.missing_sample = first.page.iter().take(MISSING_SAMPLE).map(&key).collect();
        s.budget = self.plan.max_deletes.unwrap_or_else(|| {
            // What was held when the run started: not what this run created.
            let created = if self.plan.dry_run { 0 } else { s.created };
            let held = (first.held.max(0) as u64).saturating_sub(created);
            MIN_BUDGET.max(held / 100)
        });
        if mode == Sweep::CountOnly {
            return Ok(None);
        }
        if s.missing > s.budget && !self.plan.allow_mass_delete {
            s.over_budget = true;
            return Ok(Some(format!(
                "{}: {} held here are missing from Clerk's listing, more than the deletion \
                 budget of {} (RECONCILE_MAX_DELETES, else the larger of {MIN_BUDGET} and 1 % \
                 of those held at the start): none was deleted; check Clerk (the first: {}), \
                 then, if they are really gone, run once with --reconcile-max-deletes {} (these \
                 and no more: a run that finds more missing stops again) or --allow-mass-delete \
                 (no limit)",
                s.kind,
                s.missing,
                s.budget,
                s.missing_sample.join(" "),
                s.missing
            )));
        }
        let mut page = first.page;
        loop {
            let mut writes = Vec::new();
            for k in &page {
                if gone(k).await? {
                    // When Clerk's answer confirmed it: what the deletion is dated as of.
                    let answered = now();
                    let id = key(k);
                    let cmd = delete(k, &id, answered);
                    writes.push((Change::Deleted, id, cmd));
                } else {
                    s.kept += 1;
                }
            }
            self.apply(s, writes).await?;
            match page.last() {
                Some(last) if page.len() == CANDIDATE_PAGE as usize => {
                    page = list(key(last)).await?.page;
                }
                _ => return Ok(None),
            }
        }
    }

    /// Whether Clerk says the resource at `path` does not exist (404 `resource_not_found`);
    /// any other answer but 2xx stops the run.
    pub(super) async fn gone(&self, path: &str) -> Result<bool, RunError> {
        Ok(
            crate::clerk_api::fetch_one::<serde_json::Value>(self.clerk, path)
                .await?
                .is_none(),
        )
    }

    /// Forgets identity-service's record of ids seen by `run`, a probe's (best effort: it is
    /// forgotten two days later anyway).
    pub(super) async fn forget(&self, run: &str) {
        self.finish_identity(run, None).await;
    }

    /// Forgets the run's record of ids seen on both services, and gives them the run's
    /// outcome for the operators (best effort: a run that could not is forgotten two days
    /// later).
    pub(super) async fn finish(&self, outcome: Option<vbase_proto::ops::v1::ReconcileRun>) {
        let run_id = self.run.to_string();
        self.finish_identity(&run_id, outcome.clone()).await;
        let workspace = wsp::FinishReconcileRequest {
            run_id,
            run: outcome,
        };
        let r = self
            .retry
            .call("finish_reconcile", async |_| {
                let r = self.down.request("workspace-service", workspace.clone())?;
                let r = self.down.workspace().finish_reconcile(r).await;
                r.map_err(|s| failure("finish_reconcile", &s))
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "workspace-service did not forget the run");
        }
    }

    /// identity-service's part of [`Ctx::finish`], for `run`.
    async fn finish_identity(
        &self,
        run: &str,
        outcome: Option<vbase_proto::ops::v1::ReconcileRun>,
    ) {
        let req = idp::FinishReconcileRequest {
            run_id: run.to_owned(),
            run: outcome,
        };
        let r = self
            .retry
            .call("finish_reconcile", async |_| {
                let r = self.down.request("identity-service", req.clone())?;
                let r = self.down.identity().finish_reconcile(r).await;
                r.map_err(|s| failure("finish_reconcile", &s))
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, run, "identity-service did not forget the run");
        }
    }
}

/// The command's name in logs.
fn command_name(c: &Command) -> &'static str {
    match c {
        Command::UpsertUser(_) => "upsert_user",
        Command::BanUser(..) => "ban_user",
        Command::DeleteUser(..) => "delete_user",
        Command::UpsertWorkspace(_) => "upsert_workspace",
        Command::DeleteWorkspace(_) => "delete_workspace",
        Command::UpsertMembership(_) => "upsert_membership",
        Command::DeleteMembership(_) => "delete_membership",
        Command::Ignored => "ignored",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clerk_api::ApiError;
    use crate::forward::TokenSource;
    use crate::reconcile::Scope;
    use crate::reconcile::listing::Position;

    /// A listing of `items` resources, one page per request, answered at once.
    struct Pages {
        items: usize,
    }

    impl ClerkBackend for Pages {
        async fn get(&self, _: &str, query: &[(&str, String)]) -> Result<bytes::Bytes, ApiError> {
            let param = |k: &str| -> usize {
                query
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map_or(0, |(_, v)| v.parse().unwrap())
            };
            let (offset, limit) = (param("offset"), param("limit"));
            let page: Vec<_> = (offset..self.items.min(offset + limit))
                .map(|i| serde_json::json!({"id": format!("r{i:04}"), "created_at": i}))
                .collect();
            let body = serde_json::json!({"data": page, "total_count": self.items});
            Ok(serde_json::to_vec(&body).unwrap().into())
        }

        fn requests(&self) -> u64 {
            0
        }
    }

    #[derive(serde::Deserialize)]
    struct Item {
        id: String,
        created_at: i64,
    }

    impl Positioned for Item {
        fn position(&self) -> Option<Position> {
            Some((self.created_at, self.id.clone()))
        }
    }

    /// A service failing part way through a long listing stops the run with its error: the
    /// listing must not wait forever to hand over pages nobody reads any more.
    #[tokio::test]
    async fn a_failed_page_stops_a_long_listing() {
        let down = Downstream::new(
            "http://127.0.0.1:9",
            "http://127.0.0.1:9",
            TokenSource::File {
                path: "/nonexistent".into(),
                cached: Default::default(),
            },
            Duration::from_secs(1),
            crate::metrics::Metrics::register(&mut Default::default()),
            1,
        )
        .unwrap();
        let plan = Plan {
            dry_run: false,
            kinds: Vec::new(),
            scope: Scope::All,
            page_size: 1,
            instance: None,
            move_to_instance: None,
            allow_mass_delete: false,
            max_deletes: None,
            retry: Default::default(),
        };
        let clerk = Pages { items: 40 };
        let ctx = Ctx::new(&clerk, &down, &plan);
        let mut s = KindSummary::default();
        let failing =
            async |_: &mut KindSummary, _: Vec<Item>, _: Stretch| -> Result<(), RunError> {
                Err(RunError::Services("the service is down".into()))
            };
        let listed = ctx.each_page(&mut s, Listing::Offset("/things"), failing);
        let r = tokio::time::timeout(Duration::from_secs(10), listed)
            .await
            .expect("each_page hung after a page failed");
        assert!(matches!(r, Err(RunError::Services(_))), "{r:?}");
        assert!(!s.listing_complete);
    }
}
