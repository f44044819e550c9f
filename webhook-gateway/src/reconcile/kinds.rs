//! Two functions per kind: one lists Clerk's resources page by page, compares and applies the
//! differences; the other (run only after every listing completed) deletes what Clerk no
//! longer has.

use super::RunError;
use super::Scope;
use super::ctx::{Ctx, Position, Stretch, classify, single};
use super::summary::KindSummary;
use crate::clerk::{self, Command, Membership, Organization, User};
use crate::clerk_api::{ClerkBackend, list_page};
use vbase_proto::identity::v1 as idp;
use vbase_proto::workspace::v1 as wsp;

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
