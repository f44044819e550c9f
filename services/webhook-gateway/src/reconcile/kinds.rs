//! Two functions per kind: one lists Clerk's resources page by page, compares and applies the
//! differences; the other (run only after every listing completed) deletes what Clerk no
//! longer has.

use super::RunError;
use super::Scope;
use super::ctx::{Candidates, Ctx, Sweep};
use super::items::{classify, single};
use super::listing::{Listing, Position, Stretch};
use super::summary::KindSummary;
use super::{deleted_here, members};
use crate::clerk::{self, Command, Membership, Organization, User};
use crate::clerk_api::{ClerkBackend, ListQuery, Start, list_page};
use crate::forward::failure;
use vbase_proto::identity::v1 as idp;
use vbase_proto::workspace::v1 as wsp;

/// A position as the services read it.
fn position(p: Option<Position>) -> (Option<prost_types::Timestamp>, String) {
    match p {
        Some((ms, id)) => (Some(vbase_proto::timestamp_from_millis(ms)), id),
        None => (None, String::new()),
    }
}

fn idp_range(stretch: Stretch) -> idp::ListedRange {
    let (after_created_at, after_id) = position(stretch.after);
    let (through_created_at, through_id) = position(stretch.through);
    idp::ListedRange {
        after_created_at,
        after_id,
        through_created_at,
        through_id,
    }
}

fn wsp_range(stretch: Stretch) -> wsp::ListedRange {
    let r = idp_range(stretch);
    wsp::ListedRange {
        after_created_at: r.after_created_at,
        after_id: r.after_id,
        through_created_at: r.through_created_at,
        through_id: r.through_id,
    }
}

/// Runs one page through `page` outside a listing (a run for one resource): its stretch is
/// the whole order, and the scope keeps every other resource out of the candidates.
async fn alone<T>(
    s: &mut KindSummary,
    items: Vec<T>,
    page: impl AsyncFn(&mut KindSummary, Vec<T>, Stretch) -> Result<(), RunError>,
) -> Result<(), RunError> {
    let mut d = KindSummary {
        kind: s.kind.clone(),
        ..KindSummary::default()
    };
    page(&mut d, items, Stretch::default()).await?;
    s.add(&d);
    s.listing_complete = true;
    Ok(())
}

pub(super) async fn users<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    s: &mut KindSummary,
) -> Result<(), RunError> {
    // Every page is compared, an empty one too: the users held in its stretch are candidates.
    let page =
        async |s: &mut KindSummary, users: Vec<User>, stretch: Stretch| -> Result<(), RunError> {
            // A comparison reads no event id: commands get theirs when they are written.
            let req = idp::CompareUsersRequest {
                run_id: ctx.run.to_string(),
                users: users.iter().map(|u| u.upsert(ctx.origin(""))).collect(),
                range: Some(idp_range(stretch)),
                started_at: Some(ctx.started_at),
                scope_id: ctx.plan.scope.user().unwrap_or_default().to_owned(),
            };
            let results = compare_users(ctx, req).await?;
            let c = classify(s, &users, &results, |u| {
                let id = ctx.event_id("user", &u.id);
                Some((u.id.clone(), u.command(ctx.origin(&id))))
            })?;
            ctx.apply(s, c.writes).await?;
            let live = async |u: &User| Ok(!ctx.gone(&format!("/users/{}", u.id)).await?);
            deleted_here::confirm(s, c.deleted_here, |u| u.id.clone(), live).await
        };
    match &ctx.plan.scope {
        Scope::User(id) => {
            let users = single::<User>(ctx.clerk, s, &format!("/users/{id}")).await?;
            alone(s, users, page).await
        }
        _ => ctx.each_page(s, Listing::Cursor("/users"), page).await,
    }
}

/// identity-service's comparison of a page of users (`CompareUsers`).
async fn compare_users<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    req: idp::CompareUsersRequest,
) -> Result<Vec<i32>, RunError> {
    let r = ctx
        .retry
        .call("compare_users", async |_| {
            let r = ctx.down.request("identity-service", req.clone())?;
            let r = ctx.down.identity().compare_users(r).await;
            r.map_err(|s| failure("compare_users", &s))
        })
        .await?;
    Ok(r.into_inner().results)
}

/// identity-service's candidates of a run, and the users it holds (`ListUnseenUsers`).
async fn unseen_users<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    req: idp::ListUnseenRequest,
) -> Result<idp::ListUnseenResponse, RunError> {
    let r = ctx
        .retry
        .call("list_unseen_users", async |_| {
            let r = ctx.down.request("identity-service", req.clone())?;
            let r = ctx.down.identity().list_unseen_users(r).await;
            r.map_err(|s| failure("list_unseen_users", &s))
        })
        .await?;
    Ok(r.into_inner())
}

/// A stretch of the listing order that holds no user: a comparison over it records no
/// candidate. (Its position is a second after the epoch, before anything Clerk lists.)
fn no_stretch() -> Stretch {
    let nowhere = Some((1000, String::new()));
    Stretch {
        after: nowhere.clone(),
        through: nowhere,
    }
}

/// What the key's instance lists at both ends, against what is held here: the users held, the
/// oldest and the newest `n` users Clerk lists, and how many of those are held. Read-only on
/// both sides: the comparison is made under a run of its own over a stretch that holds no
/// user, so all it records is which listed users are held, and that run is forgotten.
pub(super) async fn probe_users<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    n: usize,
) -> Result<Probe, RunError> {
    let run = uuid::Uuid::now_v7().to_string();
    let counted = idp::ListUnseenRequest {
        run_id: run.clone(),
        limit: 1,
        ..ctx.unseen(String::new())
    };
    let held = unseen_users(ctx, counted).await?.held.max(0) as u64;
    if held == 0 {
        return Ok(Probe::default());
    }
    // Oldest first, then Clerk's default order (newest first).
    let mut listed: Vec<User> = Vec::new();
    for oldest_first in [true, false] {
        let q = ListQuery {
            limit: n,
            start: Start::After(None),
            oldest_first,
            filter: &[],
        };
        let page = list_page::<User>(ctx.clerk, "/users", &q)
            .await
            .map_err(|e| RunError::Clerk(e.on_list()))?;
        for u in page.items.into_iter().filter_map(Result::ok) {
            if !listed.iter().any(|l| l.id == u.id) {
                listed.push(u);
            }
        }
    }
    let req = idp::CompareUsersRequest {
        run_id: run.clone(),
        users: listed.iter().map(|u| u.upsert(ctx.origin(""))).collect(),
        range: Some(idp_range(no_stretch())),
        started_at: Some(ctx.started_at),
        scope_id: String::new(),
    };
    let compared = compare_users(ctx, req).await;
    ctx.forget(&run).await;
    let known = compared?
        .iter()
        .filter(|c| **c != idp::Comparison::Missing as i32)
        .count();
    Ok(Probe {
        held,
        listed: listed.len(),
        known,
    })
}

/// See [`probe_users`].
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Probe {
    /// Users held here.
    pub(super) held: u64,
    /// The oldest and newest users the key's instance listed.
    pub(super) listed: usize,
    /// How many of those are held here.
    pub(super) known: usize,
}

impl Probe {
    /// Whether the key's instance is another one than the users held here came from: users are
    /// held, and none of those it listed is (Clerk's user ids are its instance's own; a
    /// deployment fed by one instance, by webhooks, sign-ins or a backfill, holds some of its
    /// oldest or newest users).
    pub(super) fn foreign(&self) -> bool {
        self.held > 0 && self.known == 0
    }
}

pub(super) async fn sweep_users<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    s: &mut KindSummary,
    mode: Sweep,
) -> Result<Option<String>, RunError> {
    let list = async |after: String| -> Result<Candidates<String>, RunError> {
        let r = unseen_users(ctx, ctx.unseen(after)).await?;
        Ok(Candidates {
            page: r.ids,
            total: r.candidates,
            held: r.held,
        })
    };
    let gone = async |id: &String| ctx.gone(&format!("/users/{id}")).await;
    // The tombstone is final (Clerk never reuses a user id): no change of the user, however
    // dated, brings it back, so no time orders this deletion. No time: when Clerk deleted it
    // is not known, so access ends when the deletion is recorded.
    let delete = |id: &String, _: &str, _| {
        let event_id = ctx.event_id("user.deleted", id);
        let mut origin = ctx.origin(&event_id);
        origin.event_time = None;
        clerk::delete_user(origin, id)
    };
    ctx.sweep(s, mode, list, String::clone, gone, delete).await
}

pub(super) async fn organizations<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    s: &mut KindSummary,
) -> Result<(), RunError> {
    let page = async |s: &mut KindSummary,
                      orgs: Vec<Organization>,
                      stretch: Stretch|
           -> Result<(), RunError> {
        // Without its `created_at` an organization has no place in the order: refused.
        let (orgs, unplaced): (Vec<_>, Vec<_>) =
            orgs.into_iter().partition(|o| o.created_at.is_some());
        for o in unplaced {
            s.refused += 1;
            tracing::warn!(id = o.id, "a listed organization has no created_at");
        }
        let req = wsp::CompareWorkspacesRequest {
            run_id: ctx.run.to_string(),
            workspaces: orgs.iter().map(|o| o.upsert(ctx.origin(""))).collect(),
            range: Some(wsp_range(stretch)),
            started_at: Some(ctx.started_at),
            scope_id: match &ctx.plan.scope {
                Scope::Org(id) => id.clone(),
                _ => String::new(),
            },
        };
        let results = ctx
            .retry
            .call("compare_workspaces", async |_| {
                let r = ctx.down.request("workspace-service", req.clone())?;
                let r = ctx.down.workspace().compare_workspaces(r).await;
                r.map_err(|s| failure("compare_workspaces", &s))
            })
            .await?
            .into_inner()
            .results;
        let c = classify(s, &orgs, &results, |o| {
            let id = ctx.event_id("organization", &o.id);
            Some((
                o.id.clone(),
                Command::UpsertWorkspace(o.upsert(ctx.origin(&id))),
            ))
        })?;
        ctx.apply(s, c.writes).await?;
        let live =
            async |o: &Organization| Ok(!ctx.gone(&format!("/organizations/{}", o.id)).await?);
        deleted_here::confirm(s, c.deleted_here, |o| o.id.clone(), live).await
    };
    match &ctx.plan.scope {
        Scope::Org(id) => {
            let orgs =
                single::<Organization>(ctx.clerk, s, &format!("/organizations/{id}")).await?;
            alone(s, orgs, page).await
        }
        _ => {
            ctx.each_page(s, Listing::Offset("/organizations"), page)
                .await
        }
    }
}

pub(super) async fn sweep_organizations<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    s: &mut KindSummary,
    mode: Sweep,
) -> Result<Option<String>, RunError> {
    let list = async |after: String| -> Result<Candidates<String>, RunError> {
        let req = ctx.unseen_ws(after);
        let r = ctx
            .retry
            .call("list_unseen_workspaces", async |_| {
                let r = ctx.down.request("workspace-service", req.clone())?;
                let r = ctx.down.workspace().list_unseen_workspaces(r).await;
                r.map_err(|s| failure("list_unseen_workspaces", &s))
            })
            .await?
            .into_inner();
        Ok(Candidates {
            page: r.clerk_org_ids,
            total: r.candidates,
            held: r.held,
        })
    };
    let gone = async |id: &String| ctx.gone(&format!("/organizations/{id}")).await;
    // As for users: the tombstone is final, and the time of recording is kept.
    let delete = |id: &String, _: &str, _| {
        Command::DeleteWorkspace(wsp::DeleteWorkspaceCommand {
            event_id: ctx.event_id("organization.deleted", id),
            occurred_at: None,
            clerk_org_id: id.clone(),
            instance_id: String::new(),
        })
    };
    ctx.sweep(s, mode, list, String::clone, gone, delete).await
}

pub(super) async fn memberships<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    s: &mut KindSummary,
) -> Result<(), RunError> {
    let page = async |s: &mut KindSummary,
                      members: Vec<Membership>,
                      stretch: Stretch|
           -> Result<(), RunError> {
        let (mut listed, mut cmds) = (Vec::new(), Vec::new());
        for m in members {
            match m.upsert(ctx.origin("")) {
                Ok(c) => {
                    cmds.push(c);
                    listed.push(m);
                }
                Err(why) => {
                    s.refused += 1;
                    tracing::warn!(
                        id = m.id,
                        reason = why.0,
                        "a listed membership is not usable"
                    );
                }
            }
        }
        let req = wsp::CompareMembershipsRequest {
            run_id: ctx.run.to_string(),
            memberships: cmds,
            range: Some(wsp_range(stretch)),
            started_at: Some(ctx.started_at),
            scope_id: ctx.plan.scope.id().to_owned(),
        };
        let results = ctx
            .retry
            .call("compare_memberships", async |_| {
                let r = ctx.down.request("workspace-service", req.clone())?;
                let r = ctx.down.workspace().compare_memberships(r).await;
                r.map_err(|s| failure("compare_memberships", &s))
            })
            .await?
            .into_inner()
            .results;
        let c = classify(s, &listed, &results, |m| {
            let id = ctx.event_id("membership", &m.id);
            let cmd = m.upsert(ctx.origin(&id)).ok()?;
            Some((m.id.clone(), Command::UpsertMembership(cmd)))
        })?;
        ctx.apply(s, c.writes).await?;
        // Only listed memberships that name their user get here (`upsert` above).
        let user = |m: &Membership| m.user_id().unwrap_or_default().to_owned();
        let id = |m: &Membership| format!("{} ({}/{})", m.id, m.organization.id, user(m));
        let live = async |m: &Membership| {
            members::in_clerk(ctx, &m.organization.id, &user(m), Some(&m.id)).await
        };
        deleted_here::confirm(s, c.deleted_here, id, live).await
    };
    // A run for one organization or user Clerk deleted: its memberships cannot be listed (404),
    // and every one held is a candidate, each confirmed gone on its own by the sweep.
    let scoped_gone = match &ctx.plan.scope {
        Scope::All => false,
        Scope::Org(id) => ctx.gone(&format!("/organizations/{id}")).await?,
        Scope::User(id) => ctx.gone(&format!("/users/{id}")).await?,
    };
    if scoped_gone {
        return alone(s, Vec::new(), page).await;
    }
    let (path, by_offset) = match &ctx.plan.scope {
        Scope::All => ("/organization_memberships".to_owned(), true),
        Scope::Org(id) => (format!("/organizations/{id}/memberships"), true),
        Scope::User(id) => (format!("/users/{id}/organization_memberships"), false),
    };
    let listing = if by_offset {
        Listing::Offset(&path)
    } else {
        Listing::Collected(&path)
    };
    ctx.each_page(s, listing, page).await
}

pub(super) async fn sweep_memberships<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    s: &mut KindSummary,
    mode: Sweep,
) -> Result<Option<String>, RunError> {
    let list = async |after: String| -> Result<Candidates<wsp::HeldMembership>, RunError> {
        let req = ctx.unseen_ws(after);
        let r = ctx
            .retry
            .call("list_unseen_memberships", async |_| {
                let r = ctx.down.request("workspace-service", req.clone())?;
                let r = ctx.down.workspace().list_unseen_memberships(r).await;
                r.map_err(|s| failure("list_unseen_memberships", &s))
            })
            .await?
            .into_inner();
        Ok(Candidates {
            page: r.memberships,
            total: r.candidates,
            held: r.held,
        })
    };
    let key = |m: &wsp::HeldMembership| format!("{}/{}", m.clerk_org_id, m.clerk_user_id);
    let gone = async |m: &wsp::HeldMembership| {
        Ok(!members::in_clerk(ctx, &m.clerk_org_id, &m.clerk_user_id, None).await?)
    };
    // Dated when Clerk's answer confirming it came back (`answered`): Clerk no longer had the
    // membership then, so every change it made before (while the run waited for its rate limit
    // or retried too) is older than this deletion and cannot bring the row back (a row without
    // a membership id is ordered by that time alone; for the others the deleted id is final).
    // A membership Clerk makes in the milliseconds between its answer and this time loses to
    // the deletion and is reported by the next run ("deleted here, live in Clerk"): access
    // lost, never kept. No event time: when Clerk removed it is not known, so access ends when
    // the deletion is recorded.
    let delete = |m: &wsp::HeldMembership, key: &str, answered| {
        Command::DeleteMembership(wsp::DeleteMembershipCommand {
            event_id: ctx.event_id("membership.deleted", &key.replace('/', ".")),
            occurred_at: Some(answered),
            clerk_org_id: m.clerk_org_id.clone(),
            clerk_user_id: m.clerk_user_id.clone(),
            clerk_membership_id: m.clerk_membership_id.clone(),
            membership_created_at: m.membership_created_at,
            event_time: None,
            instance_id: String::new(),
        })
    };
    ctx.sweep(s, mode, list, key, gone, delete).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probes_stretch_is_empty_and_not_read_as_absent() {
        let r = idp_range(no_stretch());
        let after = r.after_created_at.expect("a position, not the start");
        assert!(after.seconds > 0, "a time of 0 reads as none: {after:?}");
        assert_eq!(Some(after), r.through_created_at);
        assert_eq!(r.after_id, r.through_id);
    }
}
