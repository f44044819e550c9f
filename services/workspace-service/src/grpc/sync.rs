//! The sync commands the webhook gateway sends (service tokens only), each counted by outcome.
//! A command's Clerk instance is recorded once the command is valid: reconcile trusts the
//! instances recorded here (`ListClerkInstances`).

use super::convert::outcome;
use super::{R, WorkspaceApi, ok};
use crate::domain::memberships::{self, MembershipChange};
use crate::domain::purge::{self, DeleteWorkspace};
use crate::domain::revocations::{self, RevokeUserTokens};
use crate::domain::users::{self, RemoveUser};
use crate::domain::workspaces::{self, UpsertWorkspace};
use crate::error::Error;
use tonic::Request;
use vbase_proto::workspace::v1 as pb;

pub(super) async fn upsert_workspace(
    api: &WorkspaceApi,
    req: Request<pb::UpsertWorkspaceCommand>,
) -> R<pb::UpsertWorkspaceResponse> {
    let result = async {
        let m = req.into_inner();
        let instance = m.instance_id.clone();
        let cmd = UpsertWorkspace::try_from(m)?;
        api.ledger.note_instance(&instance).await?;
        let org = cmd.org.as_str().to_owned();
        let done = api
            .detached(None, async move |mut conn| {
                workspaces::upsert_workspace(&mut conn, &cmd).await
            })
            .await;
        api.forget_org(&org);
        done
    }
    .await;
    api.record("upsert_workspace", result.as_ref().map(|r| r.0));
    let (o, ws) = result?;
    ok(pb::UpsertWorkspaceResponse {
        outcome: outcome(o),
        workspace: ws.map(Into::into),
    })
}

pub(super) async fn delete_workspace(
    api: &WorkspaceApi,
    req: Request<pb::DeleteWorkspaceCommand>,
) -> R<pb::DeleteWorkspaceResponse> {
    let result = async {
        let m = req.into_inner();
        let instance = m.instance_id.clone();
        let cmd = DeleteWorkspace::try_from(m)?;
        api.ledger.note_instance(&instance).await?;
        let org = cmd.org.clone();
        let done = api
            .detached(None, async move |mut conn| {
                purge::delete_workspace(&mut conn, &cmd).await
            })
            .await;
        api.forget_org(org.as_str());
        Ok::<_, Error>((org, done?))
    }
    .await;
    api.record("delete_workspace", result.as_ref().map(|(_, d)| d.outcome));
    let (org, done) = result?;
    if done.purge_queued {
        api.wake_purge();
        tracing::info!(clerk_org_id = %org, "workspace deleted; its rows are purged in the background");
    }
    ok(pb::DeleteWorkspaceResponse {
        outcome: outcome(done.outcome),
        purge_queued: done.purge_queued,
    })
}

async fn change_membership<T>(
    api: &WorkspaceApi,
    command: &'static str,
    instance_id: String,
    req: Request<T>,
) -> Result<i32, Error>
where
    MembershipChange: TryFrom<T, Error = Error>,
{
    let result = async {
        let cmd = MembershipChange::try_from(req.into_inner())?;
        api.ledger.note_instance(&instance_id).await?;
        let key = (cmd.org.as_str().to_owned(), cmd.user.as_str().to_owned());
        let done = api
            .detached(None, async move |mut conn| {
                memberships::change_membership(&mut conn, &cmd).await
            })
            .await;
        api.access.invalidate(&key);
        done
    }
    .await;
    api.record(command, result.as_ref().copied());
    result.map(outcome)
}

pub(super) async fn upsert_membership(
    api: &WorkspaceApi,
    req: Request<pb::UpsertMembershipCommand>,
) -> R<pb::UpsertMembershipResponse> {
    let instance = req.get_ref().instance_id.clone();
    let outcome = change_membership(api, "upsert_membership", instance, req).await?;
    ok(pb::UpsertMembershipResponse { outcome })
}

pub(super) async fn delete_membership(
    api: &WorkspaceApi,
    req: Request<pb::DeleteMembershipCommand>,
) -> R<pb::DeleteMembershipResponse> {
    let instance = req.get_ref().instance_id.clone();
    let outcome = change_membership(api, "delete_membership", instance, req).await?;
    ok(pb::DeleteMembershipResponse { outcome })
}

pub(super) async fn remove_user(
    api: &WorkspaceApi,
    req: Request<pb::RemoveUserCommand>,
) -> R<pb::RemoveUserResponse> {
    let result = async {
        let m = req.into_inner();
        let instance = m.instance_id.clone();
        let cmd = RemoveUser::try_from(m)?;
        api.ledger.note_instance(&instance).await?;
        let user = cmd.user.as_str().to_owned();
        let done = api
            .detached(None, async move |mut conn| {
                users::remove_user(&mut conn, &cmd).await
            })
            .await;
        api.access.invalidate_where(|(_, u)| *u == user);
        done
    }
    .await;
    api.record("remove_user", result.as_ref().map(|r| r.outcome));
    let r = result?;
    ok(pb::RemoveUserResponse {
        outcome: outcome(r.outcome),
        memberships_removed: r.memberships,
        read_receipts_removed: r.read_receipts,
    })
}

/// A banned user: tokens issued before `revoked_at` are refused from the commit on (the
/// trigger's notification tells every replica; this one forgets the user at once too).
pub(super) async fn revoke_user_tokens(
    api: &WorkspaceApi,
    req: Request<pb::RevokeUserTokensCommand>,
) -> R<pb::RevokeUserTokensResponse> {
    let result = async {
        let m = req.into_inner();
        let instance = m.instance_id.clone();
        let cmd = RevokeUserTokens::try_from(m)?;
        api.ledger.note_instance(&instance).await?;
        let user = cmd.user.as_str().to_owned();
        let done = api
            .detached(None, async move |mut conn| {
                revocations::revoke_user_tokens(&mut conn, &cmd).await
            })
            .await;
        api.access.invalidate_where(|(_, u)| *u == user);
        done
    }
    .await;
    api.record("revoke_user_tokens", result.as_ref().copied());
    ok(pb::RevokeUserTokensResponse {
        outcome: outcome(result?),
    })
}
