//! Rooms.

use super::convert::{Id, Rename};
use super::{R, WorkspaceApi, ok};
use crate::domain::rooms::{self, ListRooms, NewRoom};
use crate::model::Page;
use service_runtime::user_quotas::Turn;
use tonic::Request;
use vbase_proto::workspace::v1 as pb;

pub(super) async fn create_room(
    api: &WorkspaceApi,
    req: Request<pb::CreateRoomRequest>,
) -> R<pb::CreateRoomResponse> {
    let (who, new) = api.accept::<_, NewRoom>(req)?;
    let r = rooms::create_room(&mut *api.conn().await?, &who, &new).await?;
    ok(pb::CreateRoomResponse {
        room: Some(r.into()),
    })
}

pub(super) async fn list_rooms(
    api: &WorkspaceApi,
    req: Request<pb::ListRoomsRequest>,
) -> R<pb::ListRoomsResponse> {
    let (who, mut q, reading) = api.accept_read::<_, ListRooms>(req)?;
    q.page = q.page.within(api.response_bytes);
    let Page {
        items,
        next_page_token,
    } = read_on!(api, reads, who, reading, |conn, who| {
        rooms::list_rooms(conn, who, &q)
    })?;
    ok(pb::ListRoomsResponse {
        rooms: items.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

pub(super) async fn rename_room(
    api: &WorkspaceApi,
    req: Request<pb::RenameRoomRequest>,
) -> R<pb::RenameRoomResponse> {
    let (who, r) = api.accept::<_, Rename<String>>(req)?;
    let room = rooms::rename_room(&mut *api.conn().await?, &who, r.id, &r.name).await?;
    ok(pb::RenameRoomResponse {
        room: Some(room.into()),
    })
}

pub(super) async fn delete_room(
    api: &WorkspaceApi,
    req: Request<pb::DeleteRoomRequest>,
) -> R<pb::DeleteRoomResponse> {
    let turn = req.extensions().get::<Turn>().cloned();
    let (who, Id(id)) = api.accept(req)?;
    let purge_queued = api
        .detached(turn, async move |mut conn| {
            rooms::delete_room(&mut conn, &who, id).await
        })
        .await?;
    if purge_queued {
        api.wake_purge();
    }
    ok(pb::DeleteRoomResponse { purge_queued })
}
