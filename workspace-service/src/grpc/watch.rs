//! Live watches: the handler checks the request and opens the stream (`crate::live`).

use super::{R, WorkspaceApi, ok};
use crate::domain::access::Caller;
use crate::error::Error;
use token_auth::Principal;
use tonic::Request;
use vbase_proto::workspace::v1 as pb;

pub(super) async fn watch_channel(
    api: &WorkspaceApi,
    req: Request<pb::WatchChannelRequest>,
) -> R<crate::live::watch::Events> {
    let principal = req.extensions().get::<Principal>();
    let caller = Caller::from_principal(principal)?;
    let expires_at = principal.and_then(Principal::as_user).map(|u| u.expires_at);
    let m = req.into_inner();
    let channel = input_validation::uuid("channel_id", &m.channel_id)?;
    let token = match m.resume_token.trim() {
        "" => None,
        t if t.len() > 100 => {
            return Err(
                Error::Invalid("resume_token is not one this service gave out".into()).into(),
            );
        }
        t => Some(t.to_owned()),
    };
    let events = api
        .live
        .watch_channel(caller, expires_at, channel, token)
        .await?;
    ok(events)
}
