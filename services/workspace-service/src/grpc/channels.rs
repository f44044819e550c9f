//! Channels.

use super::convert::{Id, ListChannels, Rename};
use super::{R, WorkspaceApi, ok};
use crate::domain::channels::{self, ChannelName, NewChannel};
use crate::model::Page;
use service_runtime::user_quotas::Turn;
use tonic::Request;
use vbase_proto::workspace::v1 as pb;

pub(super) async fn create_channel(
    api: &WorkspaceApi,
    req: Request<pb::CreateChannelRequest>,
) -> R<pb::CreateChannelResponse> {
    let (who, new) = api.accept::<_, NewChannel>(req)?;
    let ch = channels::create_channel(&mut *api.conn().await?, &api.channels, &who, &new).await?;
    ok(pb::CreateChannelResponse {
        channel: Some(ch.into()),
    })
}

pub(super) async fn list_channels(
    api: &WorkspaceApi,
    req: Request<pb::ListChannelsRequest>,
) -> R<pb::ListChannelsResponse> {
    let (who, mut q, reading) = api.accept_read::<_, ListChannels>(req)?;
    q.page = q.page.within(api.response_bytes);
    let Page {
        items,
        next_page_token,
    } = read_on!(api, hot, who, reading, |conn, who| {
        channels::list_channels(conn, &api.channels, who, &q.org, &q.page)
    })?;
    ok(pb::ListChannelsResponse {
        channels: items.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

pub(super) async fn rename_channel(
    api: &WorkspaceApi,
    req: Request<pb::RenameChannelRequest>,
) -> R<pb::RenameChannelResponse> {
    let (who, r) = api.accept::<_, Rename<ChannelName>>(req)?;
    let list = &api.channels;
    let ch = channels::rename_channel(&mut *api.conn().await?, list, &who, r.id, &r.name).await?;
    ok(pb::RenameChannelResponse {
        channel: Some(ch.into()),
    })
}

pub(super) async fn delete_channel(
    api: &WorkspaceApi,
    req: Request<pb::DeleteChannelRequest>,
) -> R<pb::DeleteChannelResponse> {
    let turn = req.extensions().get::<Turn>().cloned();
    let (who, Id(id)) = api.accept(req)?;
    let list = api.channels.clone();
    let deleted = api
        .detached(turn, async move |mut conn| {
            channels::delete_channel(&mut conn, &list, &who, id).await
        })
        .await?;
    if deleted.purge_queued {
        api.wake_purge();
    }
    ok(pb::DeleteChannelResponse {
        messages_deleted: deleted.messages,
    })
}
