//! Irreversible deletions by their creator or an admin only, and no writes from the still-valid
//! token of a user deleted in Clerk.

use crate::support;

use support::{Env, start_with};
use tonic::Code;
use vbase_proto::workspace::v1 as pb;

async fn room(env: &Env, kind: pb::RoomKind) -> pb::Room {
    env.client()
        .await
        .create_room(env.member(
            "user_1",
            "org_a",
            pb::CreateRoomRequest {
                clerk_org_id: "org_a".into(),
                kind: kind.into(),
                name: "r".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap()
}

#[tokio::test]
async fn room_items_and_meetings_go_only_by_their_creator_or_an_admin() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    let docs = room(&env, pb::RoomKind::Document).await;
    let conf = room(&env, pb::RoomKind::Conference).await;
    let doc = |name: &str| pb::CreateRoomItemRequest {
        room_id: docs.id.clone(),
        kind: pb::ItemKind::Document.into(),
        name: name.into(),
        language: String::new(),
        request_id: String::new(),
    };
    let mine = c
        .create_room_item(env.member("user_1", "org_a", doc("mine")))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    let delete = |id: &str| pb::DeleteRoomItemRequest {
        kind: pb::ItemKind::Document.into(),
        item_id: id.into(),
    };
    // Another member may not delete it (the Liveblocks deletion cannot be undone)...
    let refused = c
        .delete_room_item(env.member("user_2", "org_a", delete(&mine.id)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(env.count("documents").await, 1);
    assert_eq!(env.count("liveblocks_cleanup_jobs").await, 0);
    // ...an admin may, and so may the creator.
    c.delete_room_item(env.admin("user_3", "org_a", delete(&mine.id)))
        .await
        .unwrap();
    let again = c
        .create_room_item(env.member("user_1", "org_a", doc("again")))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    c.delete_room_item(env.member("user_1", "org_a", delete(&again.id)))
        .await
        .unwrap();

    let meeting = c
        .schedule_meeting(env.member(
            "user_1",
            "org_a",
            pb::ScheduleMeetingRequest {
                room_id: conf.id.clone(),
                title: "Sync".into(),
                starts_at: support::ts(2_000_000_000),
                ends_at: support::ts(2_000_003_600),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .meeting
        .unwrap();
    let cancel = || pb::CancelMeetingRequest {
        meeting_id: meeting.id.clone(),
    };
    let refused = c
        .cancel_meeting(env.member("user_2", "org_a", cancel()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let cancelled = c
        .cancel_meeting(env.admin("user_3", "org_a", cancel()))
        .await
        .unwrap()
        .into_inner()
        .meeting
        .unwrap();
    assert!(cancelled.cancelled);
}

#[tokio::test]
async fn a_deleted_users_token_no_longer_writes() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    let channel = c
        .list_channels(env.member(
            "user_1",
            "org_a",
            pb::ListChannelsRequest {
                clerk_org_id: "org_a".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .channels
        .remove(0);
    let post = || pb::PostMessageRequest {
        channel_id: channel.id.clone(),
        body: "hello".into(),
        author_clerk_id: String::new(),
        request_id: String::new(),
    };
    c.post_message(env.member("user_1", "org_a", post()))
        .await
        .unwrap();
    c.remove_user(env.service(pb::RemoveUserCommand {
        event_id: "gone".into(),
        occurred_at: support::ts(support::T0 + 5),
        clerk_user_id: "user_1".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    // The token is still valid for its lifetime; its writes are refused all the same.
    let posted = c
        .post_message(env.member("user_1", "org_a", post()))
        .await
        .unwrap_err();
    assert_eq!(posted.code(), Code::PermissionDenied, "{posted:?}");
    let read = c
        .mark_channel_read(env.member(
            "user_1",
            "org_a",
            pb::MarkChannelReadRequest {
                channel_id: channel.id.clone(),
                message_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::PermissionDenied);
    let created = c
        .create_channel(env.member(
            "user_1",
            "org_a",
            pb::CreateChannelRequest {
                clerk_org_id: "org_a".into(),
                name: "new".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(created.code(), Code::PermissionDenied);
    assert_eq!(env.count("messages").await, 1);
    assert_eq!(env.count("read_receipts").await, 0);
    // Another member still writes.
    c.post_message(env.member("user_2", "org_a", post()))
        .await
        .unwrap();
}

/// A Liveblocks room token outlives its call by up to an hour: a user deleted in Clerk gets
/// none, also with a token issued after the deletion (which the membership's standing, dated
/// by the token, lets through).
#[tokio::test]
async fn a_deleted_users_token_gets_no_liveblocks_room() {
    let env = support::start().await;
    env.workspace("org_a").await;
    let room = room(&env, pb::RoomKind::Document).await;
    let mut c = env.client().await;
    let ask = || pb::AuthorizeLiveblocksRoomRequest {
        room_id: room.liveblocks_room_id.clone(),
    };
    c.authorize_liveblocks_room(env.member("user_1", "org_a", ask()))
        .await
        .unwrap();
    c.remove_user(env.service(pb::RemoveUserCommand {
        event_id: "gone".into(),
        occurred_at: support::ts(support::T0 + 5),
        clerk_user_id: "user_1".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let refused = c
        .authorize_liveblocks_room(env.member("user_1", "org_a", ask()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(env.liveblocks.authorize_requests(), 1, "asked once, before");
}

/// Seconds after `support::T0` that lie `ahead` seconds after now.
fn after_now(ahead: i64) -> i64 {
    token_auth::signing::now_secs() - support::T0 + ahead
}

/// A token states a membership as of its `iat`. Once a webhook tells us the membership was
/// removed, the role changed or the user was deleted after that, the token is refused, for
/// reads too; changes from before the token are already in it and change nothing.
#[tokio::test]
async fn access_follows_clerks_changes_not_only_the_token() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    let list = || pb::ListChannelsRequest {
        clerk_org_id: "org_a".into(),
        ..Default::default()
    };
    for (user, role) in [
        ("user_admin", "org:admin"),
        ("user_gone", "org:member"),
        ("user_del", "org:member"),
    ] {
        c.upsert_membership(env.service(support::membership(
            &format!("m-{user}"),
            1,
            "org_a",
            user,
            role,
        )))
        .await
        .unwrap();
    }
    let admin = || env.admin("user_admin", "org_a", list());
    let gone = || env.member("user_gone", "org_a", list());
    let deleted = || env.member("user_del", "org_a", list());
    for req in [admin(), gone(), deleted()] {
        c.list_channels(req).await.unwrap();
    }
    // Changes dated before the tokens were issued are already in them.
    c.upsert_membership(env.service(support::membership(
        "old",
        2,
        "org_a",
        "user_admin",
        "org:admin",
    )))
    .await
    .unwrap();
    c.list_channels(admin()).await.unwrap();

    // Demoted, removed, deleted: after the tokens were issued.
    let tokens = (admin(), gone(), deleted());
    c.upsert_membership(env.service(support::membership(
        "demote",
        after_now(2),
        "org_a",
        "user_admin",
        "org:member",
    )))
    .await
    .unwrap();
    c.delete_membership(env.service(pb::DeleteMembershipCommand {
        event_id: "remove".into(),
        occurred_at: support::ts(support::T0 + after_now(2)),
        clerk_org_id: "org_a".into(),
        clerk_user_id: "user_gone".into(),
        event_time: support::ts(support::T0 + after_now(2)),
        ..Default::default()
    }))
    .await
    .unwrap();
    c.remove_user(env.service(pb::RemoveUserCommand {
        event_id: "delete".into(),
        occurred_at: support::ts(support::T0 + after_now(2)),
        clerk_user_id: "user_del".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    for (req, reason) in [
        (tokens.0, "role in this workspace changed"),
        (tokens.1, "membership of this workspace was removed"),
        (tokens.2, "deleted in Clerk"),
    ] {
        let refused = c.list_channels(req).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains(reason), "{refused:?}");
    }
    // Services are not users: their calls go on.
    c.list_channels(env.service(list())).await.unwrap();
}

/// A token's `iat` has whole seconds and comes from another Clerk clock than the webhook's
/// time: a removal dated in the token's own second, or the second before it, still refuses
/// the token (a token minted after the removal would not name the organization).
#[tokio::test]
async fn a_removal_dated_just_before_the_tokens_second_refuses_it() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    let list = || pb::ListChannelsRequest {
        clerk_org_id: "org_a".into(),
        ..Default::default()
    };
    for user in ["user_same", "user_early"] {
        c.upsert_membership(env.service(support::membership(
            &format!("m-{user}"),
            1,
            "org_a",
            user,
            "org:member",
        )))
        .await
        .unwrap();
    }
    let tokens = (
        env.member("user_same", "org_a", list()),
        env.member("user_early", "org_a", list()),
    );
    for (user, ahead) in [("user_same", 0), ("user_early", -1)] {
        let at = support::T0 + after_now(ahead);
        c.delete_membership(env.service(pb::DeleteMembershipCommand {
            event_id: format!("remove-{user}"),
            occurred_at: support::ts(at),
            clerk_org_id: "org_a".into(),
            clerk_user_id: user.into(),
            event_time: support::ts(at),
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    for req in [tokens.0, tokens.1] {
        let refused = c.list_channels(req).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("membership of this workspace was removed"),
            "{refused:?}"
        );
    }
}

/// A ban in Clerk revokes every session of the user: every token issued before it is refused
/// (reads, writes, Liveblocks room tokens), even from the access cache; a token issued after
/// the revocation (the user unbanned and signed in again) passes. The latest time is kept.
#[tokio::test]
async fn a_ban_refuses_tokens_issued_before_it_and_passes_later_ones() {
    use crate::room_access::{ORG, ask, fixture, token_of};
    let env = support::start().await;
    let (room, _) = fixture(&env).await;
    let mut c = env.client().await;
    let list = || pb::ListChannelsRequest {
        clerk_org_id: ORG.into(),
        ..Default::default()
    };
    let general = c.list_channels(env.service(list())).await.unwrap();
    let general = general.into_inner().channels[0].id.clone();
    let post = || pb::PostMessageRequest {
        channel_id: general.clone(),
        body: "still here".into(),
        ..Default::default()
    };
    let revoke = |id: &str, ahead: i64| {
        env.service(pb::RevokeUserTokensCommand {
            event_id: id.into(),
            revoked_at: support::ts(support::T0 + after_now(ahead)),
            clerk_user_id: "user_m".into(),
            ..Default::default()
        })
    };
    let applied = pb::CommandOutcome::Applied as i32;
    // Revoked before the token was issued (beyond the margin): the token passes, and the
    // user's access is cached.
    let o = c.revoke_user_tokens(revoke("earlier", -10)).await.unwrap();
    assert_eq!(o.into_inner().outcome, applied);
    let token = token_of(&env, "user_m", ORG, "org:member");
    c.list_channels(env.member("user_m", ORG, list()))
        .await
        .unwrap();
    c.authorize_liveblocks_room(ask(&token, &room))
        .await
        .unwrap();

    // Banned after the token was issued.
    let o = c.revoke_user_tokens(revoke("ban", 2)).await.unwrap();
    assert_eq!(o.into_inner().outcome, applied);
    let banned = "sessions were revoked in Clerk (banned or deprovisioned)";
    let refusals = [
        c.list_channels(env.member("user_m", ORG, list()))
            .await
            .map(|_| ()),
        c.post_message(env.member("user_m", ORG, post()))
            .await
            .map(|_| ()),
        c.authorize_liveblocks_room(ask(&token, &room))
            .await
            .map(|_| ()),
    ];
    for r in refusals {
        let refused = r.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains(banned), "{refused:?}");
    }
    // A repeat, or an earlier time, keeps the later revocation.
    let o = c.revoke_user_tokens(revoke("ban", 2)).await.unwrap();
    assert_eq!(o.into_inner().outcome, pb::CommandOutcome::Duplicate as i32);
    let o = c
        .revoke_user_tokens(revoke("late-retry", -10))
        .await
        .unwrap();
    assert_eq!(o.into_inner().outcome, pb::CommandOutcome::Stale as i32);
    let refused = c
        .list_channels(env.member("user_m", ORG, list()))
        .await
        .unwrap_err();
    assert!(refused.message().contains(banned), "{refused:?}");
    // Nobody else is touched; only the gateway may revoke.
    c.list_channels(env.admin("user_a", ORG, list()))
        .await
        .unwrap();
    let mut by_user = revoke("by-user", 2);
    *by_user.metadata_mut() = env.member("user_a", ORG, ()).metadata().clone();
    let refused = c.revoke_user_tokens(by_user).await.unwrap_err();
    assert!(
        matches!(
            refused.code(),
            Code::PermissionDenied | Code::Unauthenticated
        ),
        "{refused:?}"
    );
}
