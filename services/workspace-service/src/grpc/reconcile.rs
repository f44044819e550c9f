//! Reconcile (the webhook gateway only): compare pages of Clerk's listing with what is held,
//! list what the run did not see, forget a finished run.

use super::{R, WorkspaceApi, ok};
use crate::domain::reconcile::{self, Comparison, ListedMembership, ListedOrg, Page, Unseen};
use crate::error::Error;
use crate::model::{OrgId, Role, UserId};
use input_validation as v;
use tonic::Request;
use vbase_proto::workspace::v1 as pb;

fn run_id(id: &str) -> Result<uuid::Uuid, Error> {
    Ok(v::uuid("run_id", id)?)
}

fn page_len(n: usize) -> Result<(), Error> {
    if n > reconcile::MAX_PAGE {
        return Err(Error::Invalid(format!(
            "at most {} items per comparison, got {n}",
            reconcile::MAX_PAGE
        )));
    }
    Ok(())
}

fn answer(results: Vec<Comparison>) -> R<pb::CompareResponse> {
    let results = results
        .into_iter()
        .map(|c| {
            match c {
                Comparison::Missing => pb::Comparison::Missing,
                Comparison::Older => pb::Comparison::Older,
                Comparison::Same => pb::Comparison::Same,
                Comparison::Newer => pb::Comparison::Newer,
                Comparison::DeletedHere => pb::Comparison::DeletedHere,
            }
            .into()
        })
        .collect();
    ok(pb::CompareResponse { results })
}

/// The page's stretch, start and scope; `items` are the listed resources, checked.
fn page<T>(
    run: uuid::Uuid,
    items: Vec<T>,
    range: Option<pb::ListedRange>,
    started_at: Option<&prost_types::Timestamp>,
    scope: String,
) -> Result<Page<T>, Error> {
    let range = range.ok_or_else(|| {
        Error::Invalid("range is required (the stretch of the listing the page covers)".into())
    })?;
    Ok(Page {
        run,
        started_at: v::source_time("started_at", started_at)?,
        items,
        after: v::listing_position(
            "range.after_created_at",
            range.after_created_at.as_ref(),
            range.after_id,
        )?,
        through: v::listing_position(
            "range.through_created_at",
            range.through_created_at.as_ref(),
            range.through_id,
        )?,
        scope,
    })
}

fn unseen(m: pb::ListUnseenRequest) -> Result<Unseen, Error> {
    Ok(Unseen {
        run: run_id(&m.run_id)?,
        started_at: v::source_time("started_at", m.started_at.as_ref())?,
        after: m.after,
        limit: v::page_size(m.limit, 500, reconcile::MAX_PAGE as i64)?,
        scope: m.scope_id,
    })
}

pub(super) async fn compare_workspaces(
    api: &WorkspaceApi,
    req: Request<pb::CompareWorkspacesRequest>,
) -> R<pb::CompareResponse> {
    let m = req.into_inner();
    let run = run_id(&m.run_id)?;
    page_len(m.workspaces.len())?;
    if !m.scope_id.is_empty() {
        OrgId::parse("scope_id", &m.scope_id)?;
    }
    let items = m
        .workspaces
        .into_iter()
        .map(|w| {
            OrgId::parse("workspaces[].clerk_org_id", &w.clerk_org_id)?;
            Ok(ListedOrg {
                updated_at: v::source_time("workspaces[].occurred_at", w.occurred_at.as_ref())?,
                created_at: v::created_time("workspaces[].created_at", w.created_at.as_ref())?,
                org: w.clerk_org_id,
                name: w.name.trim().to_owned(),
                slug: w.slug.trim().to_owned(),
                owner: w.owner_clerk_id,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let page = page(run, items, m.range, m.started_at.as_ref(), m.scope_id)?;
    let mut conn = api.conn().await?;
    answer(reconcile::compare_orgs(&mut conn, &page).await?)
}

pub(super) async fn compare_memberships(
    api: &WorkspaceApi,
    req: Request<pb::CompareMembershipsRequest>,
) -> R<pb::CompareResponse> {
    let m = req.into_inner();
    let run = run_id(&m.run_id)?;
    page_len(m.memberships.len())?;
    if !m.scope_id.is_empty() && !m.scope_id.starts_with("user_") {
        OrgId::parse("scope_id", &m.scope_id)?;
    } else if !m.scope_id.is_empty() {
        UserId::parse("scope_id", &m.scope_id)?;
    }
    let items = m
        .memberships
        .into_iter()
        .map(|c| {
            OrgId::parse("memberships[].clerk_org_id", &c.clerk_org_id)?;
            UserId::parse("memberships[].clerk_user_id", &c.clerk_user_id)?;
            v::clerk_id(
                "memberships[].clerk_membership_id",
                "orgmem_",
                &c.clerk_membership_id,
            )?;
            Ok(ListedMembership {
                role: Role::parse(&c.role)?,
                created_at: v::created_time(
                    "memberships[].membership_created_at",
                    c.membership_created_at.as_ref(),
                )?,
                updated_at: v::source_time("memberships[].occurred_at", c.occurred_at.as_ref())?,
                org: c.clerk_org_id,
                user: c.clerk_user_id,
                membership_id: c.clerk_membership_id,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let page = page(run, items, m.range, m.started_at.as_ref(), m.scope_id)?;
    let mut conn = api.conn().await?;
    answer(reconcile::compare_memberships(&mut conn, &page).await?)
}

pub(super) async fn list_unseen_workspaces(
    api: &WorkspaceApi,
    req: Request<pb::ListUnseenRequest>,
) -> R<pb::ListUnseenWorkspacesResponse> {
    let q = unseen(req.into_inner())?;
    if q.scope.starts_with("user_") {
        return ok(pb::ListUnseenWorkspacesResponse::default());
    }
    let mut conn = api.conn().await?;
    let clerk_org_ids = reconcile::unseen_orgs(&mut conn, &q).await?;
    let (candidates, held) =
        first_counts(&mut conn, reconcile::unseen::Kind::Workspaces, &q).await?;
    ok(pb::ListUnseenWorkspacesResponse {
        clerk_org_ids,
        candidates,
        held,
    })
}

pub(super) async fn list_unseen_memberships(
    api: &WorkspaceApi,
    req: Request<pb::ListUnseenRequest>,
) -> R<pb::ListUnseenMembershipsResponse> {
    let q = unseen(req.into_inner())?;
    let mut conn = api.conn().await?;
    let memberships = reconcile::unseen_memberships(&mut conn, &q)
        .await?
        .into_iter()
        .map(|m| pb::HeldMembership {
            clerk_org_id: m.clerk_org_id,
            clerk_user_id: m.clerk_user_id,
            clerk_membership_id: m.clerk_membership_id,
            membership_created_at: m.membership_created_at.map(super::convert::timestamp),
            updated_at: Some(super::convert::timestamp(m.source_updated_at)),
        })
        .collect();
    let (candidates, held) =
        first_counts(&mut conn, reconcile::unseen::Kind::Memberships, &q).await?;
    ok(pb::ListUnseenMembershipsResponse {
        memberships,
        candidates,
        held,
    })
}

/// The candidates in all and the live rows held, on the first page of candidates only.
async fn first_counts(
    conn: &mut diesel_async::AsyncPgConnection,
    kind: reconcile::unseen::Kind,
    q: &Unseen,
) -> Result<(i64, i64), Error> {
    if q.after.is_empty() {
        reconcile::counts(conn, kind, q).await
    } else {
        Ok((0, 0))
    }
}

pub(super) async fn finish_reconcile(
    api: &WorkspaceApi,
    req: Request<pb::FinishReconcileRequest>,
) -> R<pb::FinishReconcileResponse> {
    let m = req.into_inner();
    let run = run_id(&m.run_id)?;
    let report = delivery_ledger::Ledger::check_run(m.run.as_ref(), run)?;
    let mut conn = api.conn().await?;
    reconcile::finish(&mut conn, run).await?;
    api.ledger.record_run(report).await?;
    ok(pb::FinishReconcileResponse {})
}
