//! Room items: documents, code files, whiteboards.

use super::convert::{ItemRef, PageOf, RenameItem, item};
use super::{R, WorkspaceApi, ok};
use crate::domain::items::{self, NewItem};
use crate::model::Page;
use service_runtime::user_quotas::Turn;
use tonic::Request;
use vbase_proto::workspace::v1 as pb;

pub(super) async fn create_room_item(
    api: &WorkspaceApi,
    req: Request<pb::CreateRoomItemRequest>,
) -> R<pb::CreateRoomItemResponse> {
    let (who, new) = api.accept::<_, NewItem>(req)?;
    let i = items::create_item(&mut *api.conn().await?, &who, &new).await?;
    ok(pb::CreateRoomItemResponse {
        item: Some(item(new.kind, i)),
    })
}

pub(super) async fn list_room_items(
    api: &WorkspaceApi,
    req: Request<pb::ListRoomItemsRequest>,
) -> R<pb::ListRoomItemsResponse> {
    let (who, mut q, reading) = api.accept_read::<_, PageOf>(req)?;
    q.page = q.page.within(api.response_bytes);
    let (
        kind,
        Page {
            items,
            next_page_token,
        },
    ) = read_on!(api, reads, who, reading, |conn, who| {
        items::list_items(conn, who, q.id, &q.page)
    })?;
    ok(pb::ListRoomItemsResponse {
        items: items.into_iter().map(|i| item(kind, i)).collect(),
        next_page_token,
    })
}

pub(super) async fn rename_room_item(
    api: &WorkspaceApi,
    req: Request<pb::RenameRoomItemRequest>,
) -> R<pb::RenameRoomItemResponse> {
    let (who, r) = api.accept::<_, RenameItem>(req)?;
    let ItemRef { kind, id } = r.item;
    let i = items::rename_item(&mut *api.conn().await?, &who, kind, id, &r.name).await?;
    ok(pb::RenameRoomItemResponse {
        item: Some(item(kind, i)),
    })
}

pub(super) async fn delete_room_item(
    api: &WorkspaceApi,
    req: Request<pb::DeleteRoomItemRequest>,
) -> R<pb::DeleteRoomItemResponse> {
    let turn = req.extensions().get::<Turn>().cloned();
    let (who, ItemRef { kind, id }) = api.accept(req)?;
    let room_id = api
        .detached(turn, async move |mut conn| {
            items::delete_item(&mut conn, &who, kind, id).await
        })
        .await?;
    api.wake_cleanup();
    ok(pb::DeleteRoomItemResponse {
        liveblocks_room_id: room_id,
    })
}
