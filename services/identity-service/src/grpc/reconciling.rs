//! The reconcile methods: compare what Clerk listed with what is held, list what was not seen,
//! finish a run.

use super::*;

fn run_id(id: &str) -> Result<uuid::Uuid, Status> {
    Ok(validate::uuid("run_id", id)?)
}

fn comparison(c: reconcile::Comparison) -> i32 {
    match c {
        reconcile::Comparison::Missing => pb::Comparison::Missing,
        reconcile::Comparison::Older => pb::Comparison::Older,
        reconcile::Comparison::Same => pb::Comparison::Same,
        reconcile::Comparison::Newer => pb::Comparison::Newer,
        reconcile::Comparison::DeletedHere => pb::Comparison::DeletedHere,
    }
    .into()
}

pub(super) async fn compare_users(
    api: &IdentityApi,
    req: Request<pb::CompareUsersRequest>,
) -> Result<Response<pb::CompareUsersResponse>, Status> {
    let m = req.into_inner();
    let run = run_id(&m.run_id)?;
    if m.users.len() > reconcile::MAX_PAGE {
        return Err(Status::invalid_argument(format!(
            "at most {} users per CompareUsers call, got {}",
            reconcile::MAX_PAGE,
            m.users.len()
        )));
    }
    if !m.scope_id.is_empty() {
        validate::user_id("scope_id", &m.scope_id)?;
    }
    let users = m
        .users
        .into_iter()
        .map(|u| {
            validate::user_id("users[].clerk_id", &u.clerk_id)?;
            Ok(reconcile::Listed {
                updated_at: validate::source_time("users[].occurred_at", u.occurred_at.as_ref())?,
                clerk_id: u.clerk_id,
                name: u.name.trim().to_owned(),
                email: u.email,
                image_url: u.image_url,
            })
        })
        .collect::<Result<Vec<_>, validate::Invalid>>()?;
    let range = m.range.unwrap_or_default();
    let page = reconcile::Page {
        run,
        started_at: validate::source_time("started_at", m.started_at.as_ref())?,
        users,
        after: validate::listing_position(
            "range.after_created_at",
            range.after_created_at.as_ref(),
            range.after_id,
        )?,
        through: validate::listing_position(
            "range.through_created_at",
            range.through_created_at.as_ref(),
            range.through_id,
        )?,
        scope: m.scope_id,
    };
    let results = reconcile::compare(&api.pool, &page).await?;
    Ok(Response::new(pb::CompareUsersResponse {
        results: results.into_iter().map(comparison).collect(),
    }))
}

pub(super) async fn list_unseen_users(
    api: &IdentityApi,
    req: Request<pb::ListUnseenRequest>,
) -> Result<Response<pb::ListUnseenResponse>, Status> {
    let m = req.into_inner();
    let q = reconcile::Unseen {
        run: run_id(&m.run_id)?,
        after: m.after,
        limit: validate::page_size(m.limit, 500, reconcile::MAX_PAGE as i64)?,
    };
    let ids = reconcile::unseen(&api.pool, &q).await?;
    let (candidates, held) = if q.after.is_empty() {
        reconcile::counts(&api.pool, q.run).await?
    } else {
        (0, 0)
    };
    Ok(Response::new(pb::ListUnseenResponse {
        ids,
        candidates,
        held,
    }))
}

pub(super) async fn finish_reconcile(
    api: &IdentityApi,
    req: Request<pb::FinishReconcileRequest>,
) -> Result<Response<pb::FinishReconcileResponse>, Status> {
    let m = req.into_inner();
    let run = run_id(&m.run_id)?;
    let report = delivery_ledger::Ledger::check_run(m.run.as_ref(), run)?;
    reconcile::finish(&api.pool, run).await?;
    api.ledger.record_run(report).await?;
    Ok(Response::new(pb::FinishReconcileResponse {}))
}
