//! The user-facing API: every RPC's happy path and errors, authorization, pagination, unread counts.

use crate::support;

use support::{Env, start, start_with, ts};
use tonic::Code;
use vbase_proto::workspace::v1 as pb;

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    r.err().map(|s| s.code())
}

pub(crate) async fn general(env: &Env, org: &str) -> pb::Channel {
    let mut c = env.client().await;
    c.list_channels(env.service(pb::ListChannelsRequest {
        clerk_org_id: org.into(),
        page_size: 0,
        page_token: String::new(),
    }))
    .await
    .unwrap()
    .into_inner()
    .channels
    .remove(0)
}

pub(crate) fn post(ch: &str, body: &str) -> pb::PostMessageRequest {
    pb::PostMessageRequest {
        channel_id: ch.into(),
        body: body.into(),
        author_clerk_id: String::new(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn channels_lifecycle_and_admin_rules() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    let ch = c
        .create_channel(env.member(
            "user_m",
            "org_a",
            pb::CreateChannelRequest {
                clerk_org_id: "org_a".into(),
                name: "Random".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    assert_eq!(ch.name, "random");
    let dup = c
        .create_channel(env.member(
            "user_m",
            "org_a",
            pb::CreateChannelRequest {
                clerk_org_id: "org_a".into(),
                name: "random".into(),
            },
        ))
        .await;
    assert_eq!(code(dup), Some(Code::AlreadyExists));
    let bad = c
        .create_channel(env.member(
            "user_m",
            "org_a",
            pb::CreateChannelRequest {
                clerk_org_id: "org_a".into(),
                name: "no spaces!".into(),
            },
        ))
        .await;
    assert_eq!(code(bad), Some(Code::InvalidArgument));
    // Renaming and deleting need org:admin.
    let r = c
        .rename_channel(env.member(
            "user_m",
            "org_a",
            pb::RenameChannelRequest {
                channel_id: ch.id.clone(),
                name: "fun".into(),
            },
        ))
        .await;
    assert_eq!(code(r), Some(Code::PermissionDenied));
    let r = c
        .rename_channel(env.admin(
            "user_a",
            "org_a",
            pb::RenameChannelRequest {
                channel_id: ch.id.clone(),
                name: "fun".into(),
            },
        ))
        .await;
    assert_eq!(r.unwrap().into_inner().channel.unwrap().name, "fun");
    c.post_message(env.member("user_m", "org_a", post(&ch.id, "one")))
        .await
        .unwrap();
    let r = c
        .delete_channel(env.member(
            "user_m",
            "org_a",
            pb::DeleteChannelRequest {
                channel_id: ch.id.clone(),
            },
        ))
        .await;
    assert_eq!(code(r), Some(Code::PermissionDenied));
    let r = c
        .delete_channel(env.admin(
            "user_a",
            "org_a",
            pb::DeleteChannelRequest {
                channel_id: ch.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(r.into_inner().messages_deleted, 1);
    let names: Vec<String> = c
        .list_channels(env.member(
            "user_m",
            "org_a",
            pb::ListChannelsRequest {
                clerk_org_id: "org_a".into(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .channels
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, vec!["general"]);
    let r = c
        .rename_channel(env.admin(
            "user_a",
            "org_a",
            pb::RenameChannelRequest {
                channel_id: "not-a-uuid".into(),
                name: "x".into(),
            },
        ))
        .await;
    assert_eq!(code(r), Some(Code::InvalidArgument));
}

#[tokio::test]
async fn messages_post_list_edit_delete() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let ch = general(&env, "org_a").await;
    let mut c = env.client().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let m = c
            .post_message(env.member("user_1", "org_a", post(&ch.id, &format!("m{i}"))))
            .await
            .unwrap()
            .into_inner()
            .message
            .unwrap();
        assert_eq!(m.author_clerk_id, "user_1");
        ids.push(m.id);
    }
    // Newest first, two per page.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let p = c
            .list_messages(env.member(
                "user_2",
                "org_a",
                pb::ListMessagesRequest {
                    channel_id: ch.id.clone(),
                    page_size: 2,
                    page_token: token,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(p.messages.len() <= 2);
        seen.extend(p.messages.into_iter().map(|m| m.body));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert_eq!(seen, vec!["m4", "m3", "m2", "m1", "m0"]);
    // Only the author edits; others get PERMISSION_DENIED.
    let e = c
        .edit_message(env.member(
            "user_2",
            "org_a",
            pb::EditMessageRequest {
                message_id: ids[0].clone(),
                body: "x".into(),
            },
        ))
        .await;
    assert_eq!(code(e), Some(Code::PermissionDenied));
    let e = c
        .edit_message(env.member(
            "user_1",
            "org_a",
            pb::EditMessageRequest {
                message_id: ids[0].clone(),
                body: "edited".into(),
            },
        ))
        .await
        .unwrap();
    let m = e.into_inner().message.unwrap();
    assert_eq!(m.body, "edited");
    assert!(m.edited_at.is_some());
    // Deleting someone else's message needs admin.
    let d = c
        .delete_message(env.member(
            "user_2",
            "org_a",
            pb::DeleteMessageRequest {
                message_id: ids[1].clone(),
            },
        ))
        .await;
    assert_eq!(code(d), Some(Code::PermissionDenied));
    c.delete_message(env.member(
        "user_1",
        "org_a",
        pb::DeleteMessageRequest {
            message_id: ids[1].clone(),
        },
    ))
    .await
    .unwrap();
    c.delete_message(env.admin(
        "user_9",
        "org_a",
        pb::DeleteMessageRequest {
            message_id: ids[2].clone(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(env.count("messages").await, 3);
    // Empty and oversized bodies are refused.
    assert_eq!(
        code(
            c.post_message(env.member("user_1", "org_a", post(&ch.id, "  ")))
                .await
        ),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(
            c.post_message(env.member("user_1", "org_a", post(&ch.id, &"x".repeat(10_001))))
                .await
        ),
        Some(Code::InvalidArgument)
    );
    // A service posts on behalf of a named author, and must name one.
    let s = c
        .post_message(env.service(pb::PostMessageRequest {
            channel_id: ch.id.clone(),
            body: "bot".into(),
            author_clerk_id: "user_bot".into(),
            request_id: String::new(),
        }))
        .await;
    assert_eq!(
        s.unwrap().into_inner().message.unwrap().author_clerk_id,
        "user_bot"
    );
    assert_eq!(
        code(c.post_message(env.service(post(&ch.id, "anon"))).await),
        Some(Code::InvalidArgument)
    );
    let bad_page = c
        .list_messages(env.member(
            "user_1",
            "org_a",
            pb::ListMessagesRequest {
                channel_id: ch.id.clone(),
                page_size: 0,
                page_token: "bogus!".into(),
            },
        ))
        .await;
    assert_eq!(code(bad_page), Some(Code::InvalidArgument));
    let big_page = c
        .list_messages(env.member(
            "user_1",
            "org_a",
            pb::ListMessagesRequest {
                channel_id: ch.id.clone(),
                page_size: 501,
                page_token: String::new(),
            },
        ))
        .await;
    assert_eq!(code(big_page), Some(Code::InvalidArgument));
}

#[tokio::test]
async fn pagination_is_stable_under_concurrent_inserts() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let ch = general(&env, "org_a").await;
    let mut c = env.client().await;
    let mut before = Vec::new();
    for i in 0..60 {
        before.push(
            c.post_message(env.member("user_1", "org_a", post(&ch.id, &format!("old{i}"))))
                .await
                .unwrap()
                .into_inner()
                .message
                .unwrap()
                .id,
        );
    }
    // A writer keeps posting while a reader pages through.
    let writer = {
        let mut c = env.client().await;
        let reqs: Vec<_> = (0..60)
            .map(|i| env.member("user_2", "org_a", post(&ch.id, &format!("new{i}"))))
            .collect();
        tokio::spawn(async move {
            for r in reqs {
                c.post_message(r).await.unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let p = c
            .list_messages(env.member(
                "user_1",
                "org_a",
                pb::ListMessagesRequest {
                    channel_id: ch.id.clone(),
                    page_size: 7,
                    page_token: token,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(
            p.messages
                .into_iter()
                .filter(|m| m.body.starts_with("old"))
                .map(|m| m.id),
        );
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    writer.await.unwrap();
    before.reverse();
    assert_eq!(
        seen, before,
        "every older message exactly once, newest first"
    );
}

#[tokio::test]
async fn unread_counts_are_bounded_in_channels_and_in_count() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let ch = general(&env, "org_a").await;
    // 1,200 unread messages in general; 520 more channels.
    env.sql(&format!(
        "INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
         SELECT gen_random_uuid(), c.workspace_id, c.id, 'user_2', 'm' || i,
                now() - interval '1 hour' + i * interval '1 ms'
           FROM channels c, generate_series(1, 1200) i WHERE c.id = '{}';
         INSERT INTO channels (id, workspace_id, name, created_by, created_at)
         SELECT gen_random_uuid(), c.workspace_id, 'more' || i, 'user_2', now() + i * interval '1 ms'
           FROM channels c, generate_series(1, 520) i WHERE c.id = '{}'",
        ch.id, ch.id
    ))
    .await;
    let mut c = env.client().await;
    let answer = c
        .get_unread_counts(env.member(
            "user_1",
            "org_a",
            pb::GetUnreadCountsRequest {
                clerk_org_id: "org_a".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.counts.len(), 500);
    assert!(answer.more_channels);
    assert_eq!(
        (
            answer.counts[0].channel_id.as_str(),
            answer.counts[0].unread
        ),
        (ch.id.as_str(), 1000),
        "the oldest channel first, its count capped"
    );
}

#[tokio::test]
async fn unread_counts_follow_read_receipts() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let ch = general(&env, "org_a").await;
    let mut c = env.client().await;
    let other = c
        .create_channel(env.member(
            "user_1",
            "org_a",
            pb::CreateChannelRequest {
                clerk_org_id: "org_a".into(),
                name: "dev".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            c.post_message(env.member("user_2", "org_a", post(&ch.id, &format!("g{i}"))))
                .await
                .unwrap()
                .into_inner()
                .message
                .unwrap()
                .id,
        );
    }
    c.post_message(env.member("user_2", "org_a", post(&other.id, "d0")))
        .await
        .unwrap();
    c.post_message(env.member("user_1", "org_a", post(&ch.id, "mine")))
        .await
        .unwrap();
    let counts =
        |c: &mut vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient<
            tonic::transport::Channel,
        >| {
            let req = env.member(
                "user_1",
                "org_a",
                pb::GetUnreadCountsRequest {
                    clerk_org_id: "org_a".into(),
                },
            );
            let mut c = c.clone();
            async move {
                c.get_unread_counts(req)
                    .await
                    .unwrap()
                    .into_inner()
                    .counts
                    .into_iter()
                    .map(|u| (u.channel_id, u.unread))
                    .collect::<Vec<_>>()
            }
        };
    // Own messages never count as unread.
    assert_eq!(
        counts(&mut c).await,
        vec![(ch.id.clone(), 4), (other.id.clone(), 1)]
    );
    c.mark_channel_read(env.member(
        "user_1",
        "org_a",
        pb::MarkChannelReadRequest {
            channel_id: ch.id.clone(),
            message_id: ids[1].clone(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        counts(&mut c).await,
        vec![(ch.id.clone(), 2), (other.id.clone(), 1)]
    );
    // Marking an older message read does not move the receipt back.
    c.mark_channel_read(env.member(
        "user_1",
        "org_a",
        pb::MarkChannelReadRequest {
            channel_id: ch.id.clone(),
            message_id: ids[0].clone(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        counts(&mut c).await,
        vec![(ch.id.clone(), 2), (other.id.clone(), 1)]
    );
    c.mark_channel_read(env.member(
        "user_1",
        "org_a",
        pb::MarkChannelReadRequest {
            channel_id: other.id.clone(),
            message_id: String::new(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        counts(&mut c).await,
        vec![(ch.id.clone(), 2), (other.id.clone(), 0)]
    );
    // Receipts belong to users.
    let r = c
        .mark_channel_read(env.service(pb::MarkChannelReadRequest {
            channel_id: ch.id.clone(),
            message_id: String::new(),
        }))
        .await;
    assert_eq!(code(r), Some(Code::PermissionDenied));
}

#[tokio::test]
async fn rooms_items_and_meetings() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    let mk = |kind: pb::RoomKind, name: &str| {
        env.member(
            "user_1",
            "org_a",
            pb::CreateRoomRequest {
                clerk_org_id: "org_a".into(),
                kind: kind.into(),
                name: name.into(),
                request_id: String::new(),
            },
        )
    };
    let doc_room = c
        .create_room(mk(pb::RoomKind::Document, "Specs"))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    let code_room = c
        .create_room(mk(pb::RoomKind::Code, "Repo"))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    let wb_room = c
        .create_room(mk(pb::RoomKind::Whiteboard, "Board"))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    let conf = c
        .create_room(mk(pb::RoomKind::Conference, "Standup"))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(doc_room.liveblocks_room_id, format!("room:{}", doc_room.id));
    assert_eq!(
        code(c.create_room(mk(pb::RoomKind::Unspecified, "x")).await),
        Some(Code::InvalidArgument)
    );
    let rooms = c
        .list_rooms(env.member(
            "user_1",
            "org_a",
            pb::ListRoomsRequest {
                clerk_org_id: "org_a".into(),
                kind: pb::RoomKind::Code.into(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert_eq!(
        rooms.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![code_room.id.clone()]
    );

    let item = |room: &str, kind: pb::ItemKind, name: &str, lang: &str| {
        env.member(
            "user_1",
            "org_a",
            pb::CreateRoomItemRequest {
                room_id: room.into(),
                kind: kind.into(),
                name: name.into(),
                language: lang.into(),
                request_id: String::new(),
            },
        )
    };
    let doc = c
        .create_room_item(item(&doc_room.id, pb::ItemKind::Document, "Plan", ""))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(doc.liveblocks_room_id, format!("doc:{}", doc.id));
    let file = c
        .create_room_item(item(
            &code_room.id,
            pb::ItemKind::CodeFile,
            "main.rs",
            "rust",
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(
        (file.language.as_str(), file.liveblocks_room_id.clone()),
        ("rust", format!("code:{}", file.id))
    );
    let wb = c
        .create_room_item(item(&wb_room.id, pb::ItemKind::Whiteboard, "Sketch", ""))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(wb.liveblocks_room_id, format!("whiteboard:{}", wb.id));
    // Items must fit their room.
    assert_eq!(
        code(
            c.create_room_item(item(&code_room.id, pb::ItemKind::Document, "x", ""))
                .await
        ),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(
        code(
            c.create_room_item(item(&doc_room.id, pb::ItemKind::Document, "x", "rust"))
                .await
        ),
        Some(Code::InvalidArgument)
    );
    let listed = c
        .list_room_items(env.member(
            "user_1",
            "org_a",
            pb::ListRoomItemsRequest {
                room_id: code_room.id.clone(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed.len(), 1);
    let renamed = c
        .rename_room_item(env.member(
            "user_1",
            "org_a",
            pb::RenameRoomItemRequest {
                kind: pb::ItemKind::CodeFile.into(),
                item_id: file.id.clone(),
                name: "lib.rs".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(
        (renamed.name.as_str(), renamed.language.as_str()),
        ("lib.rs", "rust")
    );
    // Deleting an item queues its Liveblocks room.
    let d = c
        .delete_room_item(env.member(
            "user_1",
            "org_a",
            pb::DeleteRoomItemRequest {
                kind: pb::ItemKind::Document.into(),
                item_id: doc.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.liveblocks_room_id, format!("doc:{}", doc.id));
    assert_eq!(env.count("liveblocks_cleanup_jobs").await, 1);

    // Meetings only in conference rooms.
    let sched = |room: &str, s: i64, e: i64| {
        env.member(
            "user_1",
            "org_a",
            pb::ScheduleMeetingRequest {
                room_id: room.into(),
                title: "Sync".into(),
                starts_at: ts(s),
                ends_at: ts(e),
                request_id: String::new(),
            },
        )
    };
    let m = c
        .schedule_meeting(sched(&conf.id, 2_000_000_000, 2_000_003_600))
        .await
        .unwrap()
        .into_inner()
        .meeting
        .unwrap();
    assert_eq!(
        code(
            c.schedule_meeting(sched(&doc_room.id, 2_000_000_000, 2_000_003_600))
                .await
        ),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(
        code(
            c.schedule_meeting(sched(&conf.id, 2_000_000_000, 1_999_999_999))
                .await
        ),
        Some(Code::InvalidArgument)
    );
    // Before year 1 (and before PostgreSQL's earliest time): refused, not an INTERNAL error.
    assert_eq!(
        code(
            c.schedule_meeting(sched(&conf.id, -1_000_000_000_000, 2_000_003_600))
                .await
        ),
        Some(Code::InvalidArgument)
    );
    let cancelled = c
        .cancel_meeting(env.member(
            "user_1",
            "org_a",
            pb::CancelMeetingRequest {
                meeting_id: m.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert!(cancelled.into_inner().meeting.unwrap().cancelled);
    let listed = c
        .list_meetings(env.member(
            "user_1",
            "org_a",
            pb::ListMeetingsRequest {
                room_id: conf.id.clone(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .meetings;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].cancelled);

    // Renaming/deleting rooms needs org:admin; deleting queues the room and its items.
    let r = c
        .rename_room(env.member(
            "user_1",
            "org_a",
            pb::RenameRoomRequest {
                room_id: code_room.id.clone(),
                name: "x".into(),
            },
        ))
        .await;
    assert_eq!(code(r), Some(Code::PermissionDenied));
    c.rename_room(env.admin(
        "user_a",
        "org_a",
        pb::RenameRoomRequest {
            room_id: code_room.id.clone(),
            name: "Monorepo".into(),
        },
    ))
    .await
    .unwrap();
    let r = c
        .delete_room(env.member(
            "user_1",
            "org_a",
            pb::DeleteRoomRequest {
                room_id: code_room.id.clone(),
            },
        ))
        .await;
    assert_eq!(code(r), Some(Code::PermissionDenied));
    let deleted = c
        .delete_room(env.admin(
            "user_a",
            "org_a",
            pb::DeleteRoomRequest {
                room_id: code_room.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.purge_queued);
    // Gone for every RPC at once, whatever the purge has done so far.
    let items = c
        .list_room_items(env.member(
            "user_1",
            "org_a",
            pb::ListRoomItemsRequest {
                room_id: code_room.id.clone(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(items), Some(Code::PermissionDenied));
    let again = c
        .delete_room(env.admin(
            "user_a",
            "org_a",
            pb::DeleteRoomRequest {
                room_id: code_room.id.clone(),
            },
        ))
        .await;
    assert_eq!(code(again), Some(Code::PermissionDenied));
    env.purges_done().await;
    assert_eq!(env.count("code_files").await, 0);
    let jobs = env.queued_rooms().await;
    assert_eq!(jobs.len(), 3);
    assert!(jobs.contains(&format!("code:{}", file.id)), "{jobs:?}");
    assert!(jobs.contains(&format!("room:{}", code_room.id)), "{jobs:?}");
}

/// Every user-facing RPC, aimed at workspace A by a member of workspace B (or of no workspace):
/// PERMISSION_DENIED, and nothing learned about what exists.
#[tokio::test]
async fn other_workspaces_are_denied_for_every_rpc() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    env.workspace("org_b").await;
    let ch = general(&env, "org_a").await;
    let mut c = env.client().await;
    let room = c
        .create_room(env.service(pb::CreateRoomRequest {
            clerk_org_id: "org_a".into(),
            kind: pb::RoomKind::Document.into(),
            name: "R".into(),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    let conf = c
        .create_room(env.service(pb::CreateRoomRequest {
            clerk_org_id: "org_a".into(),
            kind: pb::RoomKind::Conference.into(),
            name: "C".into(),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    let doc = c
        .create_room_item(env.service(pb::CreateRoomItemRequest {
            room_id: room.id.clone(),
            kind: pb::ItemKind::Document.into(),
            name: "D".into(),
            language: String::new(),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    let msg = c
        .post_message(env.service(pb::PostMessageRequest {
            channel_id: ch.id.clone(),
            body: "x".into(),
            author_clerk_id: "user_a".into(),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    let meeting = c
        .schedule_meeting(env.service(pb::ScheduleMeetingRequest {
            room_id: conf.id.clone(),
            title: "M".into(),
            starts_at: ts(2_000_000_000),
            ends_at: ts(2_000_000_100),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .meeting
        .unwrap();
    let missing = uuid::Uuid::now_v7().to_string();
    let org = "org_a".to_string();

    for (label, mk) in [("member of B", 0), ("admin of B", 1), ("no active org", 2)] {
        macro_rules! denied {
            ($call:ident, $msg:expr) => {{
                let m = $msg;
                let req = match mk {
                    0 => env.member("user_x", "org_b", m),
                    1 => env.admin("user_x", "org_b", m),
                    _ => env.issuers.user("user_x", m),
                };
                let r = c.$call(req).await;
                assert_eq!(
                    code(r),
                    Some(Code::PermissionDenied),
                    "{} {}",
                    label,
                    stringify!($call)
                );
            }};
        }
        denied!(
            get_workspace,
            pb::GetWorkspaceRequest {
                clerk_org_id: org.clone()
            }
        );
        denied!(
            list_members,
            pb::ListMembersRequest {
                clerk_org_id: org.clone(),
                page_size: 0,
                page_token: String::new()
            }
        );
        denied!(
            create_channel,
            pb::CreateChannelRequest {
                clerk_org_id: org.clone(),
                name: "x".into()
            }
        );
        denied!(
            list_channels,
            pb::ListChannelsRequest {
                clerk_org_id: org.clone(),
                page_size: 0,
                page_token: String::new()
            }
        );
        denied!(
            rename_channel,
            pb::RenameChannelRequest {
                channel_id: ch.id.clone(),
                name: "x".into()
            }
        );
        denied!(
            delete_channel,
            pb::DeleteChannelRequest {
                channel_id: ch.id.clone()
            }
        );
        denied!(post_message, post(&ch.id, "x"));
        denied!(
            list_messages,
            pb::ListMessagesRequest {
                channel_id: ch.id.clone(),
                page_size: 0,
                page_token: String::new()
            }
        );
        denied!(
            edit_message,
            pb::EditMessageRequest {
                message_id: msg.id.clone(),
                body: "x".into()
            }
        );
        denied!(
            delete_message,
            pb::DeleteMessageRequest {
                message_id: msg.id.clone()
            }
        );
        denied!(
            mark_channel_read,
            pb::MarkChannelReadRequest {
                channel_id: ch.id.clone(),
                message_id: String::new()
            }
        );
        denied!(
            get_unread_counts,
            pb::GetUnreadCountsRequest {
                clerk_org_id: org.clone()
            }
        );
        denied!(
            create_room,
            pb::CreateRoomRequest {
                clerk_org_id: org.clone(),
                kind: pb::RoomKind::Code.into(),
                name: "x".into(),
                request_id: String::new()
            }
        );
        denied!(
            list_rooms,
            pb::ListRoomsRequest {
                clerk_org_id: org.clone(),
                kind: 0,
                page_size: 0,
                page_token: String::new()
            }
        );
        denied!(
            rename_room,
            pb::RenameRoomRequest {
                room_id: room.id.clone(),
                name: "x".into()
            }
        );
        denied!(
            delete_room,
            pb::DeleteRoomRequest {
                room_id: room.id.clone()
            }
        );
        denied!(
            create_room_item,
            pb::CreateRoomItemRequest {
                room_id: room.id.clone(),
                kind: pb::ItemKind::Document.into(),
                name: "x".into(),
                language: String::new(),
                request_id: String::new()
            }
        );
        denied!(
            list_room_items,
            pb::ListRoomItemsRequest {
                room_id: room.id.clone(),
                page_size: 0,
                page_token: String::new()
            }
        );
        denied!(
            rename_room_item,
            pb::RenameRoomItemRequest {
                kind: pb::ItemKind::Document.into(),
                item_id: doc.id.clone(),
                name: "x".into()
            }
        );
        denied!(
            delete_room_item,
            pb::DeleteRoomItemRequest {
                kind: pb::ItemKind::Document.into(),
                item_id: doc.id.clone()
            }
        );
        denied!(
            schedule_meeting,
            pb::ScheduleMeetingRequest {
                room_id: conf.id.clone(),
                title: "x".into(),
                starts_at: ts(2_000_000_000),
                ends_at: ts(2_000_000_100),
                request_id: String::new()
            }
        );
        denied!(
            list_meetings,
            pb::ListMeetingsRequest {
                room_id: conf.id.clone(),
                page_size: 0,
                page_token: String::new()
            }
        );
        denied!(
            cancel_meeting,
            pb::CancelMeetingRequest {
                meeting_id: meeting.id.clone()
            }
        );
        // An id that exists nowhere answers the same as one in another workspace.
        denied!(
            list_messages,
            pb::ListMessagesRequest {
                channel_id: missing.clone(),
                page_size: 0,
                page_token: String::new()
            }
        );
        denied!(
            delete_room,
            pb::DeleteRoomRequest {
                room_id: missing.clone()
            }
        );
        // The workspace of another org that does not exist at all: same answer.
        denied!(
            get_workspace,
            pb::GetWorkspaceRequest {
                clerk_org_id: "org_nowhere".into()
            }
        );
    }
    // Nothing changed in A.
    assert_eq!(env.count("messages").await, 1);
    assert_eq!(env.count("documents").await, 1);
    assert_eq!(env.count("channels").await, 2);
}

/// Reads are prepared once per pooled connection; a migration that adds a column while the
/// service runs (a rolling deploy) must not break them ("cached plan must not change result
/// type" is what `SELECT *` would get).
#[tokio::test]
async fn prepared_reads_survive_a_column_added_while_running() {
    let env = start().await;
    env.workspace("org_a").await;
    let ch = general(&env, "org_a").await;
    let mut c = env.client().await;
    c.post_message(env.member("user_m", "org_a", post(&ch.id, "before")))
        .await
        .unwrap();
    let list = pb::ListMessagesRequest {
        channel_id: ch.id.clone(),
        page_size: 10,
        page_token: String::new(),
    };
    for round in ["before the migration", "after the migration"] {
        for _ in 0..5 {
            let r = c
                .list_messages(env.member("user_m", "org_a", list.clone()))
                .await;
            assert!(r.is_ok(), "{round}: {:?}", r.err());
            assert_eq!(r.unwrap().into_inner().messages[0].body, "before");
            assert_eq!(general(&env, "org_a").await.name, "general", "{round}");
        }
        env.sql(
            "ALTER TABLE messages ADD COLUMN IF NOT EXISTS pinned boolean NOT NULL DEFAULT false",
        )
        .await;
        env.sql("ALTER TABLE channels ADD COLUMN IF NOT EXISTS topic text")
            .await;
    }
}

/// With the access cache off, every page is read with the caller's access in one statement:
/// a member pages through every channel once, in order, and a member of another organization
/// is refused.
#[tokio::test]
async fn a_member_pages_channels_with_the_access_cache_off() {
    let env = support::start_custom(false, |c| c.access_cache_bytes = 0).await;
    env.workspace("org_p").await;
    let mut c = env.client().await;
    let mut expected = vec!["general".to_owned()];
    for i in 0..7 {
        let name = format!("c{i}");
        c.create_channel(env.member(
            "user_m",
            "org_p",
            pb::CreateChannelRequest {
                clerk_org_id: "org_p".into(),
                name: name.clone(),
            },
        ))
        .await
        .unwrap();
        expected.push(name);
    }
    let (mut names, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = c
            .list_channels(env.member(
                "user_m",
                "org_p",
                pb::ListChannelsRequest {
                    clerk_org_id: "org_p".into(),
                    page_size: 3,
                    page_token: token,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.channels.len() <= 3);
        names.extend(page.channels.into_iter().map(|c| c.name));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, expected);
    assert_eq!(pages, 3);
    let other = c
        .list_channels(env.member(
            "user_x",
            "org_other",
            pb::ListChannelsRequest {
                clerk_org_id: "org_p".into(),
                page_size: 3,
                page_token: String::new(),
            },
        ))
        .await;
    assert_eq!(code(other), Some(Code::PermissionDenied));
}
