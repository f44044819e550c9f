//! Meetings in conference rooms.

use super::convert::{Id, PageOf};
use super::{R, WorkspaceApi, ok};
use crate::domain::meetings::{self, NewMeeting};
use crate::model::Page;
use tonic::Request;
use vbase_proto::workspace::v1 as pb;

pub(super) async fn schedule_meeting(
    api: &WorkspaceApi,
    req: Request<pb::ScheduleMeetingRequest>,
) -> R<pb::ScheduleMeetingResponse> {
    let (who, new) = api.accept::<_, NewMeeting>(req)?;
    let m = meetings::schedule_meeting(&mut *api.conn().await?, &who, &new).await?;
    ok(pb::ScheduleMeetingResponse {
        meeting: Some(m.into()),
    })
}

pub(super) async fn list_meetings(
    api: &WorkspaceApi,
    req: Request<pb::ListMeetingsRequest>,
) -> R<pb::ListMeetingsResponse> {
    let (who, mut q, reading) = api.accept_read::<_, PageOf>(req)?;
    q.page = q.page.within(api.response_bytes);
    let Page {
        items,
        next_page_token,
    } = read_on!(api, reads, who, reading, |conn, who| {
        meetings::list_meetings(conn, who, q.id, &q.page)
    })?;
    ok(pb::ListMeetingsResponse {
        meetings: items.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

pub(super) async fn cancel_meeting(
    api: &WorkspaceApi,
    req: Request<pb::CancelMeetingRequest>,
) -> R<pb::CancelMeetingResponse> {
    let (who, Id(id)) = api.accept(req)?;
    let m = meetings::cancel_meeting(&mut *api.conn().await?, &who, id).await?;
    ok(pb::CancelMeetingResponse {
        meeting: Some(m.into()),
    })
}
