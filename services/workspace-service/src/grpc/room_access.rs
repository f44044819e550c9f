//! Liveblocks room access: the domain decides who enters which room with which permissions,
//! Liveblocks signs the access token. No connection is held while Liveblocks answers.

use super::{R, WorkspaceApi, ok};
use crate::domain::access::Caller;
use crate::domain::room_access::{LiveblocksRoom, room_entry};
use crate::error::Error;
use crate::liveblocks::Refused;
use token_auth::Principal;
use tonic::Request;
use vbase_proto::workspace::v1 as pb;

pub(super) async fn authorize_liveblocks_room(
    api: &WorkspaceApi,
    req: Request<pb::AuthorizeLiveblocksRoomRequest>,
) -> R<pb::AuthorizeLiveblocksRoomResponse> {
    let answer = room_token(api, req).await;
    api.metrics.room_token(crate::liveblocks::outcome(&answer));
    ok(answer.map_err(Error::from)?)
}

/// The room's entry and its token, counted by outcome by the caller.
async fn room_token(
    api: &WorkspaceApi,
    req: Request<pb::AuthorizeLiveblocksRoomRequest>,
) -> Result<pb::AuthorizeLiveblocksRoomResponse, Refused> {
    // Decided on the database, not the access cache: a token outlives the call by up to an
    // hour, so a removal this replica has not heard yet must not be granted one.
    let caller = Caller::from_principal(req.extensions().get::<Principal>(), api.roles())?;
    let room = LiveblocksRoom::parse(&req.into_inner().room_id)?;
    let entry = {
        let mut conn = api.conn().await?;
        room_entry(&mut conn, &caller, room).await?
    };
    let token = api.room_tokens.issue(&entry).await?;
    Ok(pb::AuthorizeLiveblocksRoomResponse {
        token: token.into_inner(),
        permissions: entry.permissions.iter().map(|p| (*p).to_owned()).collect(),
    })
}
