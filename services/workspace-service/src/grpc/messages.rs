//! Messages and read receipts.

use super::convert::{EditMessage, Id, MarkRead, Org, PageOf, timestamp};
use super::{R, WorkspaceApi, ok};
use crate::domain::messages::{self, NewMessage};
use crate::domain::receipts;
use crate::model::Page;
use tonic::Request;
use vbase_proto::workspace::v1 as pb;

pub(super) async fn post_message(
    api: &WorkspaceApi,
    req: Request<pb::PostMessageRequest>,
) -> R<pb::PostMessageResponse> {
    let (who, new) = api.accept::<_, NewMessage>(req)?;
    let msg = messages::post_message(&mut *api.conn().await?, &who, &new).await?;
    ok(pb::PostMessageResponse {
        message: Some(msg.into()),
    })
}

pub(super) async fn list_messages(
    api: &WorkspaceApi,
    req: Request<pb::ListMessagesRequest>,
) -> R<pb::ListMessagesResponse> {
    let (who, mut q, reading) = api.accept_read::<_, PageOf>(req)?;
    q.page = q.page.within(api.response_bytes);
    let Page {
        items,
        next_page_token,
    } = read_on!(api, reads, who, reading, |conn, who| {
        messages::list_messages(conn, who, q.id, &q.page)
    })?;
    ok(pb::ListMessagesResponse {
        messages: items.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

pub(super) async fn edit_message(
    api: &WorkspaceApi,
    req: Request<pb::EditMessageRequest>,
) -> R<pb::EditMessageResponse> {
    let (who, e) = api.accept::<_, EditMessage>(req)?;
    let msg = messages::edit_message(&mut *api.conn().await?, &who, e.id, &e.body).await?;
    ok(pb::EditMessageResponse {
        message: Some(msg.into()),
    })
}

pub(super) async fn delete_message(
    api: &WorkspaceApi,
    req: Request<pb::DeleteMessageRequest>,
) -> R<pb::DeleteMessageResponse> {
    let (who, Id(id)) = api.accept(req)?;
    messages::delete_message(&mut *api.conn().await?, &who, id).await?;
    ok(pb::DeleteMessageResponse {})
}

pub(super) async fn mark_channel_read(
    api: &WorkspaceApi,
    req: Request<pb::MarkChannelReadRequest>,
) -> R<pb::MarkChannelReadResponse> {
    let (who, m) = api.accept::<_, MarkRead>(req)?;
    let at = receipts::mark_read(&mut *api.conn().await?, &who, m.channel_id, m.message_id).await?;
    ok(pb::MarkChannelReadResponse {
        last_read_at: at.map(timestamp),
    })
}

pub(super) async fn get_unread_counts(
    api: &WorkspaceApi,
    req: Request<pb::GetUnreadCountsRequest>,
) -> R<pb::GetUnreadCountsResponse> {
    let (who, Org(org), reading) = api.accept_read(req)?;
    let (counts, more_channels) = read_on!(api, reads, who, reading, |conn, who| {
        receipts::unread_counts(conn, who, &org)
    })?;
    ok(pb::GetUnreadCountsResponse {
        more_channels,
        counts: counts
            .into_iter()
            .map(|(id, unread)| pb::UnreadCount {
                channel_id: id.to_string(),
                unread,
            })
            .collect(),
    })
}
