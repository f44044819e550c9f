//! Reading a workspace and its members.

use super::convert::Org;
use super::{R, WorkspaceApi, ok};
use crate::domain::access::workspace_for;
use crate::domain::memberships::{self, ListMembers};
use crate::model::paging::encode_key;
use tonic::Request;
use vbase_proto::workspace::v1 as pb;

pub(super) async fn get_workspace(
    api: &WorkspaceApi,
    req: Request<pb::GetWorkspaceRequest>,
) -> R<pb::GetWorkspaceResponse> {
    let (who, Org(org), reading) = api.accept_read(req)?;
    let ws = read_on!(api, reads, who, reading, |conn, who| {
        workspace_for(conn, who, &org)
    })?;
    ok(pb::GetWorkspaceResponse {
        workspace: Some(ws.into()),
    })
}

pub(super) async fn list_members(
    api: &WorkspaceApi,
    req: Request<pb::ListMembersRequest>,
) -> R<pb::ListMembersResponse> {
    let (who, mut q, reading) = api.accept_read::<_, ListMembers>(req)?;
    q.max_bytes = api.response_bytes;
    let (rows, next) = read_on!(api, reads, who, reading, |conn, who| {
        memberships::list_members(conn, who, &q)
    })?;
    ok(pb::ListMembersResponse {
        members: rows.into_iter().map(Into::into).collect(),
        next_page_token: next.map(|k| encode_key(&k)).unwrap_or_default(),
    })
}
