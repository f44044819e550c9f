//! Live watches: the handlers check the request and open the stream (`crate::live`).

use super::{R, WorkspaceApi, ok};
use crate::domain::access::Caller;
use crate::error::Error;
use crate::live::watch::Events;
use token_auth::Principal;
use tonic::Request;
use vbase_proto::workspace::v1 as pb;

/// The caller, when its token expires, and the resume token of a watch request.
fn watcher<T>(
    req: &Request<T>,
    resume_token: &str,
) -> Result<(Caller, Option<i64>, Option<String>), Error> {
    let principal = req.extensions().get::<Principal>();
    let caller = Caller::from_principal(principal)?;
    let expires_at = principal.map(Principal::expires_at);
    let token = match resume_token.trim() {
        "" => None,
        t if t.len() > 100 => {
            return Err(Error::Invalid(
                "resume_token is not one this service gave out".into(),
            ));
        }
        t => Some(t.to_owned()),
    };
    Ok((caller, expires_at, token))
}

pub(super) async fn watch_channel(
    api: &WorkspaceApi,
    req: Request<pb::WatchChannelRequest>,
) -> R<Events<pb::ChannelEvent>> {
    let (caller, expires_at, token) = watcher(&req, &req.get_ref().resume_token)?;
    let channel = input_validation::uuid("channel_id", &req.get_ref().channel_id)?;
    ok(api
        .live
        .watch_channel(caller, expires_at, channel, token)
        .await?)
}

pub(super) async fn watch_workspace(
    api: &WorkspaceApi,
    req: Request<pb::WatchWorkspaceRequest>,
) -> R<Events<pb::WorkspaceEvent>> {
    let (caller, expires_at, token) = watcher(&req, &req.get_ref().resume_token)?;
    let org = crate::model::OrgId::parse("clerk_org_id", &req.get_ref().clerk_org_id)?;
    ok(api
        .live
        .watch_workspace(caller, expires_at, org, token)
        .await?)
}
