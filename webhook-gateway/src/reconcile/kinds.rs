//! Two functions per kind: one lists Clerk's resources page by page, compares and applies the
//! differences; the other (run only after every listing completed) deletes what Clerk no
//! longer has.

use super::summary::KindSummary;
use super::{Plan, RunError, Scope};
use crate::clerk::{self, Command, Membership, Organization, User};
use crate::clerk_api::{ClerkBackend, Unparsed, list_page};
use crate::forward::{Downstream, ForwardError};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use std::time::Duration;
use uuid::Uuid;
use vbase_proto::identity::v1 as idp;
use vbase_proto::workspace::v1 as wsp;

/// Candidates asked for per `ListUnseen*` call.
const CANDIDATE_PAGE: i32 = 500;
/// Writes in flight at once.
const WRITES_IN_FLIGHT: usize = 32;
/// Pages compared and applied at once.
const PAGES_IN_FLIGHT: usize = 4;
/// A progress line every this many pages.
const PAGES_PER_PROGRESS_LINE: u64 = 20;

/// What a run shares across kinds.
pub(super) struct Ctx<'a, C> {
    clerk: &'a C,
    down: &'a Downstream,
    plan: &'a Plan,
    pub(super) run: Uuid,
    /// When the run started: only what was created here before it can be deleted, and the
    /// `event_time` of every command (the time Clerk's listing said it).
    started_at: prost_types::Timestamp,
}

/// A position in Clerk's listing order: `created_at` (ms), then id.
type Position = (i64, String);

/// The stretch of the listing order a page covers: after `after` (`None`: from the start) up
/// to `through` inclusive (`None`: to the end).
#[derive(Debug, Clone, Default)]
pub(super) struct Stretch {
    after: Option<Position>,
    through: Option<Position>,
}

/// A listed resource's position in the listing order.
pub(super) trait Positioned {
    fn position(&self) -> Position;
}

impl Positioned for User {
    fn position(&self) -> Position {
        (self.created_at.unwrap_or(i64::MIN), self.id.clone())
    }
}

impl Positioned for Organization {
    fn position(&self) -> Position {
        (self.created_at.unwrap_or(i64::MIN), self.id.clone())
    }
}

impl Positioned for Membership {
    fn position(&self) -> Position {
        (self.created_at, self.id.clone())
    }
}

/// What an applied write counts as.
#[derive(Debug, Clone, Copy)]
enum Change {
    Created,
    Updated,
    Deleted,
}

impl Change {
    fn count(self, s: &mut KindSummary) {
        match self {
            Change::Created => s.created += 1,
            Change::Updated => s.updated += 1,
            Change::Deleted => s.deleted += 1,
        }
    }
}

/// A write to send: what it counts as, the resource id (for logs), the command.
type Write = (Change, String, Command);

impl<'a, C: ClerkBackend> Ctx<'a, C> {
    pub(super) fn new(clerk: &'a C, down: &'a Downstream, plan: &'a Plan) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            clerk,
            down,
            plan,
            run: Uuid::now_v7(),
            started_at: vbase_proto::timestamp_from_millis(now.as_millis() as i64),
        }
    }

    /// The event id of one write: names the run, the action and the resource.
    fn event_id(&self, action: &str, id: &str) -> String {
        format!("reconcile-{}-{action}-{id}", self.run)
    }

    fn unseen(&self, after: String) -> idp::ListUnseenRequest {
        idp::ListUnseenRequest {
            run_id: self.run.to_string(),
            started_at: Some(self.started_at),
            after,
            limit: CANDIDATE_PAGE,
            scope_id: self.plan.scope.id().to_owned(),
        }
    }

    fn unseen_ws(&self, after: String) -> wsp::ListUnseenRequest {
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
    /// counted and logged; a service that cannot be reached stops the run.
    async fn apply(&self, s: &mut KindSummary, writes: Vec<Write>) -> Result<(), RunError> {
        if self.plan.dry_run {
            writes.iter().for_each(|(c, _, _)| c.count(s));
            return Ok(());
        }
        let results: Vec<_> = futures::stream::iter(writes)
            .map(|(change, id, cmd)| async move { (change, id, self.down.send(cmd).await) })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        for (change, id, r) in results {
            match r {
                Ok("applied") => change.count(s),
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

    /// Pages `path` oldest first. Fetching runs ahead of handling, and up to
    /// [`PAGES_IN_FLIGHT`] pages are compared and applied at once (their order does not
    /// matter: the services' guard orders every write), so a round trip to a service does not
    /// add to the time of each page.
    async fn each_page<T, F>(
        &self,
        s: &mut KindSummary,
        path: &str,
        apply: F,
    ) -> Result<(), RunError>
    where
        T: DeserializeOwned + Send + 'static,
        T: Positioned,
        F: AsyncFn(&mut KindSummary, Vec<T>, Stretch) -> Result<(), RunError>,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel(PAGES_IN_FLIGHT);
        let size = self.plan.page_size;
        let producer = async move {
            let (mut offset, mut after) = (0, None);
            loop {
                let page = list_page::<T>(self.clerk, path, offset, size).await;
                let (items, last) = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                offset += items.len();
                // The page covers the listing after the previous page's last position up to
                // its own last one; the last page covers the rest.
                let furthest = items
                    .iter()
                    .filter_map(|i| i.as_ref().ok().map(Positioned::position))
                    .max();
                let through = if last {
                    None
                } else {
                    furthest.or_else(|| after.clone())
                };
                let stretch = Stretch {
                    after: after.clone(),
                    through: through.clone(),
                };
                if tx.send(Ok((items, stretch))).await.is_err() || last {
                    return;
                }
                after = through;
            }
        };
        let progress = indicatif::ProgressBar::new_spinner();
        progress.enable_steady_tick(Duration::from_millis(200));
        let kind = s.kind.clone();
        let handle = |page: Result<(Vec<Result<T, Unparsed>>, Stretch), _>| {
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
            let pages = futures::stream::poll_fn(|cx| rx.poll_recv(cx));
            let mut handled = pages.map(handle).buffer_unordered(PAGES_IN_FLIGHT);
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
        let ((), result) = tokio::join!(producer, consumer);
        progress.finish_and_clear();
        result?;
        s.listing_complete = true;
        Ok(())
    }

    /// Pages the service's deletion candidates (`list`, after a key), confirms each with Clerk
    /// (`gone`) and deletes those Clerk no longer has (`delete`); the others are counted kept.
    async fn sweep<K>(
        &self,
        s: &mut KindSummary,
        list: impl AsyncFn(String) -> Result<Vec<K>, RunError>,
        key: impl Fn(&K) -> String,
        gone: impl AsyncFn(&K) -> Result<bool, RunError>,
        delete: impl Fn(&K, &str) -> Command,
    ) -> Result<(), RunError> {
        let mut after = String::new();
        loop {
            let page = list(after).await?;
            let mut writes = Vec::new();
            for k in &page {
                if gone(k).await? {
                    let id = key(k);
                    let cmd = delete(k, &id);
                    writes.push((Change::Deleted, id, cmd));
                } else {
                    s.kept += 1;
                }
            }
            self.apply(s, writes).await?;
            match page.last() {
                Some(last) if page.len() == CANDIDATE_PAGE as usize => after = key(last),
                _ => return Ok(()),
            }
        }
    }

    /// Whether Clerk answers 404 for `path`.
    async fn gone(&self, path: &str) -> Result<bool, RunError> {
        Ok(self.clerk.get(path, &[]).await?.is_none())
    }

    /// Forgets the run's record of ids seen on both services (best effort: a run that could
    /// not is forgotten two days later).
    pub(super) async fn finish(&self) {
        let run_id = self.run.to_string();
        if let Ok(r) = self.down.request(
            "identity-service",
            idp::FinishReconcileRequest {
                run_id: run_id.clone(),
            },
        ) && let Err(e) = self.down.identity().finish_reconcile(r).await
        {
            tracing::warn!(error = %e.message(), "identity-service did not forget the run");
        }
        if let Ok(r) = self
            .down
            .request("workspace-service", wsp::FinishReconcileRequest { run_id })
            && let Err(e) = self.down.workspace().finish_reconcile(r).await
        {
            tracing::warn!(error = %e.message(), "workspace-service did not forget the run");
        }
    }
}

/// The items that parsed; the others are counted and logged by id.
fn usable<T>(s: &mut KindSummary, page: Vec<Result<T, Unparsed>>) -> Vec<T> {
    page.into_iter()
        .filter_map(|item| match item {
            Ok(t) => Some(t),
            Err(u) => {
                s.refused += 1;
                tracing::warn!(kind = s.kind, id = ?u.id, reason = u.reason, "a listed resource does not parse");
                None
            }
        })
        .collect()
}

/// Pairs each command with its comparison: missing or older ones become writes; the others
/// are counted.
fn classify<T>(
    s: &mut KindSummary,
    items: Vec<(String, T)>,
    results: &[i32],
    to_command: impl Fn(T) -> Command,
) -> Result<Vec<Write>, RunError> {
    if results.len() != items.len() {
        return Err(RunError::Services(format!(
            "a comparison answered {} results for {} items",
            results.len(),
            items.len()
        )));
    }
    let mut writes = Vec::new();
    for ((id, item), r) in items.into_iter().zip(results) {
        match r {
            1 => writes.push((Change::Created, id, to_command(item))),
            2 => writes.push((Change::Updated, id, to_command(item))),
            3 => s.unchanged += 1,
            _ => s.stale += 1,
        }
    }
    Ok(writes)
}

/// A single resource as a page of zero or one.
async fn single<T: DeserializeOwned>(
    clerk: &impl ClerkBackend,
    s: &mut KindSummary,
    path: &str,
) -> Result<Vec<T>, RunError> {
    let found = crate::clerk_api::fetch_one::<T>(clerk, path).await?;
    let items = usable(s, found.into_iter().collect());
    s.listed += items.len() as u64;
    Ok(items)
}

pub(super) async fn users<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    s: &mut KindSummary,
) -> Result<(), RunError> {
    // Every page is compared, an empty one too: the users held in its stretch are candidates.
    let page =
        async |s: &mut KindSummary, users: Vec<User>, stretch: Stretch| -> Result<(), RunError> {
            let cmds: Vec<(String, idp::UpsertUserCommand)> = users
                .iter()
                .map(|u| {
                    let id = ctx.event_id("user", &u.id);
                    (u.id.clone(), u.upsert(&id, Some(ctx.started_at)))
                })
                .collect();
            let position = |p: Option<Position>| match p {
                Some((ms, id)) => (Some(vbase_proto::timestamp_from_millis(ms)), id),
                None => (None, String::new()),
            };
            let (after_created_at, after_id) = position(stretch.after);
            let (through_created_at, through_id) = position(stretch.through);
            let req = idp::CompareUsersRequest {
                run_id: ctx.run.to_string(),
                users: cmds.iter().map(|(_, c)| c.clone()).collect(),
                range: Some(idp::ListedRange {
                    after_created_at,
                    after_id,
                    through_created_at,
                    through_id,
                }),
                started_at: Some(ctx.started_at),
                scope_id: ctx.plan.scope.user().unwrap_or_default().to_owned(),
            };
            let results = ctx
                .down
                .identity()
                .compare_users(ctx.down.request("identity-service", req)?)
                .await?
                .into_inner()
                .results;
            let writes = classify(s, cmds, &results, Command::UpsertUser)?;
            ctx.apply(s, writes).await
        };
    match &ctx.plan.scope {
        Scope::User(id) => {
            let users = single::<User>(ctx.clerk, s, &format!("/users/{id}")).await?;
            let mut d = KindSummary {
                kind: s.kind.clone(),
                ..KindSummary::default()
            };
            page(&mut d, users, Stretch::default()).await?;
            s.add(&d);
            s.listing_complete = true;
        }
        _ => ctx.each_page(s, "/users", page).await?,
    }
    Ok(())
}

pub(super) async fn sweep_users<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    s: &mut KindSummary,
) -> Result<(), RunError> {
    let list = async |after: String| -> Result<Vec<String>, RunError> {
        let req = ctx.down.request("identity-service", ctx.unseen(after))?;
        Ok(ctx
            .down
            .identity()
            .list_unseen_users(req)
            .await?
            .into_inner()
            .ids)
    };
    let gone = async |id: &String| ctx.gone(&format!("/users/{id}")).await;
    let delete =
        |id: &String, _: &str| clerk::delete_user(&ctx.event_id("user.deleted", id), id, None);
    ctx.sweep(s, list, String::clone, gone, delete).await
}

pub(super) async fn organizations<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    s: &mut KindSummary,
) -> Result<(), RunError> {
    let page =
        async |s: &mut KindSummary, orgs: Vec<Organization>, _: Stretch| -> Result<(), RunError> {
            if orgs.is_empty() {
                return Ok(());
            }
            let cmds: Vec<(String, wsp::UpsertWorkspaceCommand)> = orgs
                .iter()
                .map(|o| {
                    let id = ctx.event_id("organization", &o.id);
                    (o.id.clone(), o.upsert(&id, Some(ctx.started_at)))
                })
                .collect();
            let req = wsp::CompareWorkspacesRequest {
                run_id: ctx.run.to_string(),
                workspaces: cmds.iter().map(|(_, c)| c.clone()).collect(),
            };
            let results = ctx
                .down
                .workspace()
                .compare_workspaces(ctx.down.request("workspace-service", req)?)
                .await?
                .into_inner()
                .results;
            let writes = classify(s, cmds, &results, Command::UpsertWorkspace)?;
            ctx.apply(s, writes).await
        };
    match &ctx.plan.scope {
        Scope::Org(id) => {
            let orgs =
                single::<Organization>(ctx.clerk, s, &format!("/organizations/{id}")).await?;
            let mut d = KindSummary {
                kind: s.kind.clone(),
                ..KindSummary::default()
            };
            page(&mut d, orgs, Stretch::default()).await?;
            s.add(&d);
            s.listing_complete = true;
        }
        _ => ctx.each_page(s, "/organizations", page).await?,
    }
    Ok(())
}

pub(super) async fn sweep_organizations<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    s: &mut KindSummary,
) -> Result<(), RunError> {
    let list = async |after: String| -> Result<Vec<String>, RunError> {
        let req = ctx
            .down
            .request("workspace-service", ctx.unseen_ws(after))?;
        let found = ctx.down.workspace().list_unseen_workspaces(req).await?;
        Ok(found.into_inner().clerk_org_ids)
    };
    let gone = async |id: &String| ctx.gone(&format!("/organizations/{id}")).await;
    let delete = |id: &String, _: &str| {
        Command::DeleteWorkspace(wsp::DeleteWorkspaceCommand {
            event_id: ctx.event_id("organization.deleted", id),
            occurred_at: None,
            clerk_org_id: id.clone(),
        })
    };
    ctx.sweep(s, list, String::clone, gone, delete).await
}

pub(super) async fn memberships<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    s: &mut KindSummary,
) -> Result<(), RunError> {
    let page =
        async |s: &mut KindSummary, members: Vec<Membership>, _: Stretch| -> Result<(), RunError> {
            if members.is_empty() {
                return Ok(());
            }
            let cmds: Vec<(String, wsp::UpsertMembershipCommand)> = members
                .iter()
                .map(|m| {
                    let id = ctx.event_id("membership", &m.id);
                    (m.id.clone(), m.upsert(&id, Some(ctx.started_at)))
                })
                .collect();
            let req = wsp::CompareMembershipsRequest {
                run_id: ctx.run.to_string(),
                memberships: cmds.iter().map(|(_, c)| c.clone()).collect(),
            };
            let results = ctx
                .down
                .workspace()
                .compare_memberships(ctx.down.request("workspace-service", req)?)
                .await?
                .into_inner()
                .results;
            let writes = classify(s, cmds, &results, Command::UpsertMembership)?;
            ctx.apply(s, writes).await
        };
    let path = match &ctx.plan.scope {
        Scope::All => "/organization_memberships".to_owned(),
        Scope::Org(id) => format!("/organizations/{id}/memberships"),
        Scope::User(id) => format!("/users/{id}/organization_memberships"),
    };
    ctx.each_page(s, &path, page).await
}

pub(super) async fn sweep_memberships<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    s: &mut KindSummary,
) -> Result<(), RunError> {
    let list = async |after: String| -> Result<Vec<wsp::HeldMembership>, RunError> {
        let req = ctx
            .down
            .request("workspace-service", ctx.unseen_ws(after))?;
        let found = ctx.down.workspace().list_unseen_memberships(req).await?;
        Ok(found.into_inner().memberships)
    };
    let key = |m: &wsp::HeldMembership| format!("{}/{}", m.clerk_org_id, m.clerk_user_id);
    let gone = async |m: &wsp::HeldMembership| {
        Ok(!still_member(ctx, &m.clerk_org_id, &m.clerk_user_id).await?)
    };
    let delete = |m: &wsp::HeldMembership, key: &str| {
        Command::DeleteMembership(wsp::DeleteMembershipCommand {
            event_id: ctx.event_id("membership.deleted", &key.replace('/', ".")),
            occurred_at: m.updated_at,
            clerk_org_id: m.clerk_org_id.clone(),
            clerk_user_id: m.clerk_user_id.clone(),
            clerk_membership_id: m.clerk_membership_id.clone(),
            membership_created_at: m.membership_created_at,
            event_time: None,
        })
    };
    ctx.sweep(s, list, key, gone, delete).await
}

/// Whether Clerk lists `user` as a member of `org` now. A listing item that does not parse
/// counts as a membership (nothing is deleted on a doubt).
async fn still_member<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    org: &str,
    user: &str,
) -> Result<bool, RunError> {
    let path = format!("/users/{user}/organization_memberships");
    let mut offset = 0;
    loop {
        let (items, last) =
            list_page::<Membership>(ctx.clerk, &path, offset, ctx.plan.page_size).await?;
        if items
            .iter()
            .any(|m| m.as_ref().is_err() || m.as_ref().is_ok_and(|m| m.organization.id == org))
        {
            return Ok(true);
        }
        if last {
            return Ok(false);
        }
        offset += items.len();
    }
}
