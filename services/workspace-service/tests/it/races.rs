//! Writes racing the deletion of what holds them (their workspace, channel or room): each
//! write's scope check passes while the deletion is committing, then the write waits for the
//! deletion's locks. It comes before the deletion, or is refused as a call made after it would
//! be, and leaves nothing; the deletion stays the last change watchers hear of.

use crate::support::*;
use crate::watch::channel;
use tonic::Code;
use vbase_proto::workspace::v1 as pb;

/// The workspace's numbering held by the test: each writer passes its checks, then waits, at
/// its number or at a row the deletion locked, in the order they came.
pub(crate) async fn hold_numbering(env: &Env, ws: &str) -> Held {
    env.hold(&format!(
        "SELECT 1 FROM change_heads WHERE workspace_id = '{ws}' FOR UPDATE"
    ))
    .await
}

/// The last entry of workspace `id`'s log, as its watcher would get it.
async fn last_entry(env: &Env, id: &str) -> pb::workspace_event::Event {
    use prost::Message;
    use service_runtime::Settled;
    #[derive(diesel::QueryableByName)]
    struct Entry {
        #[diesel(sql_type = diesel::sql_types::Binary)]
        payload: Vec<u8>,
    }
    let mut conn = env.conn().await;
    let e: Entry = diesel::sql_query(format!(
        "SELECT payload FROM change_log WHERE workspace_id = '{id}' ORDER BY seq DESC LIMIT 1"
    ))
    .one(&mut conn)
    .await
    .unwrap();
    pb::WorkspaceEvent::decode(e.payload.as_slice())
        .expect("a workspace's own event")
        .event
        .unwrap()
}

/// A post, and a removal of a member, whose checks passed while their workspace's deletion
/// was committing take their numbers after it: the deletion closed the log, so the post is
/// refused and leaves no message, the removal succeeds and records nothing there, and the
/// deletion stays the last entry (which the purge keeps and watchers read last).
#[tokio::test]
async fn writes_racing_their_workspaces_deletion_leave_it_the_last_entry() {
    let env = start_with(false).await;
    let ch = channel(&env, "org_race", "live").await;
    let ws = env.workspace("org_race").await.id;
    let mut c = env.client().await;
    c.upsert_membership(env.service(membership("m-race", 10, "org_race", "user_r", "org:member")))
        .await
        .unwrap();
    let held = hold_numbering(&env, &ws).await;
    let deletion = tokio::spawn({
        let (mut c, req) = (c.clone(), env.service(delete_ws("d-race", 20, "org_race")));
        async move { c.delete_workspace(req).await }
    });
    env.lock_waiters(1).await;
    let posted = tokio::spawn({
        let req = env.member(
            "user_a",
            "org_race",
            pb::PostMessageRequest {
                channel_id: ch.clone(),
                body: "posted as the workspace went".into(),
                ..Default::default()
            },
        );
        let mut c = c.clone();
        async move { c.post_message(req).await }
    });
    env.lock_waiters(2).await;
    let removal = tokio::spawn({
        let req = env.service(pb::RemoveUserCommand {
            event_id: "del-user_r".into(),
            occurred_at: ts(T0 + 30),
            clerk_user_id: "user_r".into(),
            instance_id: String::new(),
        });
        let mut c = c.clone();
        async move { c.remove_user(req).await }
    });
    env.lock_waiters(3).await;
    drop(held);
    deletion.await.unwrap().expect("the deletion applies");
    let refused = posted.await.unwrap().expect_err("the post is refused");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let removed = removal.await.unwrap().expect("the removal applies");
    assert_eq!(removed.into_inner().memberships_removed, 1);
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM messages WHERE workspace_id = '{ws}'"
        ))
        .await,
        0,
        "the refused post left no message"
    );
    assert!(
        matches!(
            last_entry(&env, &ws).await,
            pb::workspace_event::Event::WorkspaceDeleted(_)
        ),
        "the deletion is the log's last entry"
    );
}

/// A post whose check passed as its channel's deletion committed meets the deleted channel at
/// its insert: refused as the channel unseen (PERMISSION_DENIED for a user), not INTERNAL.
#[tokio::test]
async fn a_post_racing_its_channels_deletion_is_refused_as_unseen() {
    let env = start_with(false).await;
    let ch = channel(&env, "org_rc", "live").await;
    let ws = env.workspace("org_rc").await.id;
    let c = env.client().await;
    let held = hold_numbering(&env, &ws).await;
    let deletion = tokio::spawn({
        let req = env.admin(
            "user_a",
            "org_rc",
            pb::DeleteChannelRequest {
                channel_id: ch.clone(),
            },
        );
        let mut c = c.clone();
        async move { c.delete_channel(req).await }
    });
    env.lock_waiters(1).await;
    let posted = tokio::spawn({
        let req = env.member(
            "user_a",
            "org_rc",
            pb::PostMessageRequest {
                channel_id: ch.clone(),
                body: "posted as the channel went".into(),
                ..Default::default()
            },
        );
        let mut c = c.clone();
        async move { c.post_message(req).await }
    });
    env.lock_waiters(2).await;
    drop(held);
    deletion.await.unwrap().expect("the deletion applies");
    let refused = posted.await.unwrap().expect_err("the post is refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("channel"), "{refused:?}");
    assert_eq!(env.count("messages").await, 0);
}

/// An item created and a rename of the room, both checked as the room's deletion committed:
/// each waits for the deletion's hold on the room's row, finds the room deleted, and is
/// refused; the deletion stays the last change, and no item is left in the deleted room.
#[tokio::test]
async fn writes_racing_their_rooms_deletion_are_refused() {
    let env = start_with(false).await;
    let ws = env.workspace("org_rr").await.id;
    let c = env.client().await;
    let room = room(&env, "org_rr", pb::RoomKind::Document, "Specs").await;
    let held = hold_numbering(&env, &ws).await;
    let deletion = tokio::spawn({
        let req = env.admin(
            "user_a",
            "org_rr",
            pb::DeleteRoomRequest {
                room_id: room.clone(),
            },
        );
        let mut c = c.clone();
        async move { c.delete_room(req).await }
    });
    env.lock_waiters(1).await;
    let created = tokio::spawn({
        let req = env.member(
            "user_b",
            "org_rr",
            pb::CreateRoomItemRequest {
                room_id: room.clone(),
                kind: pb::ItemKind::Document.into(),
                name: "Plan".into(),
                language: String::new(),
                request_id: String::new(),
            },
        );
        let mut c = c.clone();
        async move { c.create_room_item(req).await }
    });
    env.lock_waiters(2).await;
    let renamed = tokio::spawn({
        let req = env.admin(
            "user_a",
            "org_rr",
            pb::RenameRoomRequest {
                room_id: room.clone(),
                name: "Specs, renamed".into(),
            },
        );
        let mut c = c.clone();
        async move { c.rename_room(req).await }
    });
    env.lock_waiters(3).await;
    drop(held);
    deletion.await.unwrap().expect("the deletion applies");
    refused_as_unseen(vec![
        ("the item", created.await.unwrap().map(|_| ())),
        ("the rename", renamed.await.unwrap().map(|_| ())),
    ]);
    assert_eq!(
        env.count("documents").await,
        0,
        "no item in the deleted room"
    );
    room_deletion_is_last(&env, &ws).await;
}

/// Each answer refused as its room unseen.
fn refused_as_unseen(answers: Vec<(&str, Result<(), tonic::Status>)>) {
    for (what, answer) in answers {
        let refused = answer.expect_err(what);
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{what}: {refused:?}"
        );
    }
}

/// The room's deletion is the last entry of workspace `ws`'s log.
async fn room_deletion_is_last(env: &Env, ws: &str) {
    assert!(
        matches!(
            last_entry(env, ws).await,
            pb::workspace_event::Event::RoomDeleted(_)
        ),
        "a room's deletion is the log's last entry"
    );
}

/// A room of `kind` named `name` in `org`, created by admin `user_a`.
async fn room(env: &Env, org: &str, kind: pb::RoomKind, name: &str) -> String {
    env.client()
        .await
        .create_room(env.admin(
            "user_a",
            org,
            pb::CreateRoomRequest {
                clerk_org_id: org.into(),
                kind: kind.into(),
                name: name.into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap()
        .id
}

/// An item's deletion and a meeting's cancellation whose checks passed while their rooms'
/// deletions were committing wait for them, find the rooms gone and are refused: nothing of
/// theirs is recorded after `RoomDeleted`, and the meeting is not cancelled (the rooms' purges
/// remove both).
#[tokio::test]
async fn removals_racing_their_rooms_deletion_are_refused() {
    let env = start_with(false).await;
    let ws = env.workspace("org_rm").await.id;
    let c = env.client().await;
    let docs = room(&env, "org_rm", pb::RoomKind::Document, "Specs").await;
    let conf = room(&env, "org_rm", pb::RoomKind::Conference, "Calls").await;
    let item = c
        .clone()
        .create_room_item(env.admin(
            "user_a",
            "org_rm",
            pb::CreateRoomItemRequest {
                room_id: docs.clone(),
                kind: pb::ItemKind::Document.into(),
                name: "Plan".into(),
                language: String::new(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap()
        .id;
    let meeting = c
        .clone()
        .schedule_meeting(env.admin(
            "user_a",
            "org_rm",
            pb::ScheduleMeetingRequest {
                room_id: conf.clone(),
                title: "Sync".into(),
                starts_at: Some(prost_types::Timestamp {
                    seconds: 2_000_000_000,
                    nanos: 0,
                }),
                ends_at: Some(prost_types::Timestamp {
                    seconds: 2_000_003_600,
                    nanos: 0,
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .meeting
        .unwrap()
        .id;
    let held = hold_numbering(&env, &ws).await;
    let mut deletions = Vec::new();
    for (n, room_id) in (1..).zip([docs, conf]) {
        let req = env.admin("user_a", "org_rm", pb::DeleteRoomRequest { room_id });
        let mut c = c.clone();
        deletions.push(tokio::spawn(async move { c.delete_room(req).await }));
        env.lock_waiters(n).await;
    }
    let deleted = tokio::spawn({
        let req = env.admin(
            "user_a",
            "org_rm",
            pb::DeleteRoomItemRequest {
                kind: pb::ItemKind::Document.into(),
                item_id: item.clone(),
            },
        );
        let mut c = c.clone();
        async move { c.delete_room_item(req).await }
    });
    env.lock_waiters(3).await;
    let cancelled = tokio::spawn({
        let req = env.admin(
            "user_a",
            "org_rm",
            pb::CancelMeetingRequest {
                meeting_id: meeting.clone(),
            },
        );
        let mut c = c.clone();
        async move { c.cancel_meeting(req).await }
    });
    env.lock_waiters(4).await;
    drop(held);
    for deletion in deletions {
        deletion
            .await
            .unwrap()
            .expect("the room's deletion applies");
    }
    refused_as_unseen(vec![
        ("the item's deletion", deleted.await.unwrap().map(|_| ())),
        ("the cancellation", cancelled.await.unwrap().map(|_| ())),
    ]);
    assert_eq!(
        env.count("meetings WHERE cancelled_at IS NOT NULL").await,
        0,
        "the meeting was not cancelled (the purge may have removed it since)"
    );
    room_deletion_is_last(&env, &ws).await;
}

/// "Mark read" without a message marks the channel read up to its newest message, not up to
/// the clock: a message still being posted (its row written, waiting for the workspace's
/// numbering) when the reader marks the channel read stays unread once it lands.
#[tokio::test]
async fn a_message_still_being_posted_when_the_channel_is_marked_read_stays_unread() {
    let env = start_with(false).await;
    let ch = channel(&env, "org_read", "news").await;
    let ws = env.workspace("org_read").await.id;
    let mut c = env.client().await;
    let post = |body: &str| {
        env.member(
            "user_writer",
            "org_read",
            pb::PostMessageRequest {
                channel_id: ch.clone(),
                body: body.into(),
                ..Default::default()
            },
        )
    };
    c.post_message(post("seen")).await.unwrap();
    let held = hold_numbering(&env, &ws).await;
    let posting = tokio::spawn({
        let (mut c, req) = (c.clone(), post("not seen yet"));
        async move { c.post_message(req).await }
    });
    env.lock_waiters(1).await;
    // The reader has seen "seen" only; its receipt waits for the numbering too.
    let marking = tokio::spawn({
        let req = env.member(
            "user_reader",
            "org_read",
            pb::MarkChannelReadRequest {
                channel_id: ch.clone(),
                message_id: String::new(),
            },
        );
        let mut c = c.clone();
        async move { c.mark_channel_read(req).await }
    });
    env.lock_waiters(2).await;
    drop(held);
    posting.await.unwrap().unwrap();
    marking.await.unwrap().unwrap();
    let counts = c
        .get_unread_counts(env.member(
            "user_reader",
            "org_read",
            pb::GetUnreadCountsRequest {
                clerk_org_id: "org_read".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .counts;
    let unread: Vec<_> = counts
        .iter()
        .filter(|u| u.channel_id == ch)
        .map(|u| u.unread)
        .collect();
    assert_eq!(unread, vec![1], "{counts:?}");
    // A channel without messages: nothing to mark, no receipt.
    let empty = channel(&env, "org_read", "quiet").await;
    let r = c
        .mark_channel_read(env.member(
            "user_reader",
            "org_read",
            pb::MarkChannelReadRequest {
                channel_id: empty,
                message_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.last_read_at, None);
}
