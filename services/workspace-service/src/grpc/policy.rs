//! Who may call which method of `WorkspaceService` (handlers add the per-workspace and admin
//! checks).

use token_auth::{Access, MethodPolicy};

/// The sync commands, sent by the webhook gateway.
pub const SYNC_COMMANDS: &[&str] = &[
    "UpsertWorkspace",
    "DeleteWorkspace",
    "UpsertMembership",
    "DeleteMembership",
    "RemoveUser",
    "RevokeUserTokens",
];

/// Reconcile, for the webhook gateway's service token only (the quarantine intake is
/// `delivery-ledger`'s service).
pub const RECONCILE_METHODS: &[&str] = &[
    "CompareWorkspaces",
    "CompareMemberships",
    "ListUnseenWorkspaces",
    "ListUnseenMemberships",
    "FinishReconcile",
];

/// Methods for users (within their active workspace) and for services.
pub const CONTENT_METHODS: &[&str] = &[
    "GetWorkspace",
    "ListMembers",
    "CreateChannel",
    "ListChannels",
    "RenameChannel",
    "DeleteChannel",
    "PostMessage",
    "ListMessages",
    "EditMessage",
    "DeleteMessage",
    "MarkChannelRead",
    "GetUnreadCounts",
    "WatchChannel",
    "WatchWorkspace",
    "CreateRoom",
    "ListRooms",
    "RenameRoom",
    "DeleteRoom",
    "CreateRoomItem",
    "ListRoomItems",
    "RenameRoomItem",
    "DeleteRoomItem",
    "ScheduleMeeting",
    "ListMeetings",
    "CancelMeeting",
];

/// Methods for users only: a Liveblocks room token is issued to a person.
pub const USER_METHODS: &[&str] = &["AuthorizeLiveblocksRoom"];

/// The content methods that change data: a user's calls to them count against
/// `USER_WRITES_PER_MINUTE`.
pub const WRITE_METHODS: &[&str] = &[
    "CreateChannel",
    "RenameChannel",
    "DeleteChannel",
    "PostMessage",
    "EditMessage",
    "DeleteMessage",
    "MarkChannelRead",
    "CreateRoom",
    "RenameRoom",
    "DeleteRoom",
    "CreateRoomItem",
    "RenameRoomItem",
    "DeleteRoomItem",
    "ScheduleMeeting",
    "CancelMeeting",
];

/// The access policy of `vbase.workspace.v1.WorkspaceService`.
pub fn policy() -> MethodPolicy {
    MethodPolicy::new(crate::SERVICE_NAME)
        .allow_all(SYNC_COMMANDS, Access::Service)
        .allow_all(
            RECONCILE_METHODS,
            Access::ServiceNamed(token_auth::GATEWAY_SUBJECT),
        )
        .allow_all(CONTENT_METHODS, Access::UserOrService)
        .allow_all(USER_METHODS, Access::User)
        .writes(WRITE_METHODS)
}
