//! Live watches of a channel: changes in commit order from a resume token, then live, on any
//! replica; bounded for slow clients; ended by expiry and lost access.

use crate::support::*;
use service_harness::RunningServer;
use std::time::Duration;
use tonic::{Code, Streaming};
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::channel_event::Event;

/// The workspace `org` with a channel; returns the channel id.
pub(crate) async fn channel(env: &Env, org: &str, name: &str) -> String {
    env.workspace(org).await;
    env.client()
        .await
        .create_channel(env.admin(
            "user_a",
            org,
            pb::CreateChannelRequest {
                clerk_org_id: org.into(),
                name: name.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap()
        .id
}

pub(crate) async fn watch(
    env: &Env,
    user: &str,
    org: &str,
    channel: &str,
    token: &str,
) -> Streaming<pb::ChannelEvent> {
    watch_through(env.client().await, env, user, org, channel, token).await
}

/// [`watch`] through `client`.
async fn watch_through(
    mut client: pb::workspace_service_client::WorkspaceServiceClient<tonic::transport::Channel>,
    env: &Env,
    user: &str,
    org: &str,
    channel: &str,
    token: &str,
) -> Streaming<pb::ChannelEvent> {
    client
        .watch_channel(env.member(
            user,
            org,
            pb::WatchChannelRequest {
                channel_id: channel.into(),
                resume_token: token.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

pub(crate) async fn post(env: &Env, org: &str, channel: &str, body: &str) -> String {
    env.client()
        .await
        .post_message(env.member(
            "user_a",
            org,
            pb::PostMessageRequest {
                channel_id: channel.into(),
                body: body.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap()
        .id
}

pub(crate) async fn next(s: &mut Streaming<pb::ChannelEvent>) -> pb::ChannelEvent {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an event within 10 s")
        .expect("no error")
        .expect("the stream goes on")
}

/// A short description of an event, for comparing sequences.
pub(crate) fn what(e: &pb::ChannelEvent) -> String {
    match e.event.as_ref().unwrap() {
        Event::MessagePosted(m) => format!("posted {}", m.body),
        Event::MessageEdited(m) => format!("edited {}", m.body),
        Event::MessageDeleted(id) => format!("deleted {id}"),
        Event::Read(r) => format!("read {}", r.clerk_user_id),
        Event::CaughtUp(_) => "caught up".into(),
    }
}

#[tokio::test]
async fn a_watcher_gets_every_change_in_order_and_resumes_after_a_gap() {
    let env = start_with(false).await;
    let ch = channel(&env, "org_w", "live").await;
    let other = channel(&env, "org_w", "elsewhere").await;
    let mut b = watch(&env, "user_b", "org_w", &ch, "").await;
    let first = next(&mut b).await;
    assert_eq!(what(&first), "caught up");

    let m1 = post(&env, "org_w", &ch, "one").await;
    post(&env, "org_w", &other, "not this channel").await;
    let mut c = env.client().await;
    c.edit_message(env.member(
        "user_a",
        "org_w",
        pb::EditMessageRequest {
            message_id: m1.clone(),
            body: "one, edited".into(),
        },
    ))
    .await
    .unwrap();
    post(&env, "org_w", &ch, "two").await;
    c.delete_message(env.member(
        "user_a",
        "org_w",
        pb::DeleteMessageRequest {
            message_id: m1.clone(),
        },
    ))
    .await
    .unwrap();
    c.mark_channel_read(env.member(
        "user_b",
        "org_w",
        pb::MarkChannelReadRequest {
            channel_id: ch.clone(),
            message_id: String::new(),
        },
    ))
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next(&mut b).await);
    }
    let expected = [
        "posted one".to_owned(),
        "edited one, edited".into(),
        "posted two".into(),
        format!("deleted {m1}"),
        "read user_b".into(),
    ];
    assert_eq!(seen.iter().map(what).collect::<Vec<_>>(), expected);
    assert!(seen.iter().all(|e| e.recorded_at.is_some()));

    // B goes away after the second event; more happens; B resumes with that event's token.
    drop(b);
    post(&env, "org_w", &ch, "three").await;
    post(&env, "org_w", &ch, "four").await;
    let mut again = watch(&env, "user_b", "org_w", &ch, &seen[1].resume_token).await;
    let mut resumed = Vec::new();
    loop {
        let e = next(&mut again).await;
        let done = what(&e) == "caught up";
        resumed.push(what(&e));
        if done {
            break;
        }
    }
    assert_eq!(
        resumed,
        [
            &expected[2..],
            &[
                "posted three".to_owned(),
                "posted four".into(),
                "caught up".into()
            ]
        ]
        .concat(),
        "everything after the token, once, in order"
    );
    // Live again after the backlog.
    post(&env, "org_w", &ch, "five").await;
    assert_eq!(what(&next(&mut again).await), "posted five");

    // Tokens of another channel's workspace, made up, or too old are refused with a reason.
    let mut c = env.client().await;
    for (token, code) in [
        ("nonsense", Code::InvalidArgument),
        (
            &format!("{}.1", uuid::Uuid::nil().simple()),
            Code::InvalidArgument,
        ),
    ] {
        let e = c
            .watch_channel(env.member(
                "user_b",
                "org_w",
                pb::WatchChannelRequest {
                    channel_id: ch.clone(),
                    resume_token: token.to_owned(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{token}: {e:?}");
    }
    // The change right after the first event's token is pruned: that token is too old.
    let s0: i64 = seen[0]
        .resume_token
        .rsplit('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    env.sql(&format!("DELETE FROM change_log WHERE seq <= {}", s0 + 1))
        .await;
    let old = c
        .watch_channel(env.member(
            "user_b",
            "org_w",
            pb::WatchChannelRequest {
                channel_id: ch.clone(),
                resume_token: seen[0].resume_token.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::FailedPrecondition, "{old:?}");
    assert!(old.message().contains("list again"), "{old:?}");
    // Another workspace's member may not watch.
    let denied = c
        .watch_channel(env.member(
            "user_x",
            "org_other",
            pb::WatchChannelRequest {
                channel_id: ch.clone(),
                resume_token: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_change_on_one_replica_reaches_a_watcher_on_another_and_nothing_is_missed_under_concurrent_writers()
 {
    let env = start_with(false).await;
    let ch = channel(&env, "org_r", "live").await;
    let cfg = config(env.db.url(), &env.issuers, None);
    let second = RunningServer::start(|l, s| workspace_service::run(cfg, l, s)).await;
    let mut on_second =
        vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient::new(
            second.channel().await,
        )
        .watch_channel(env.member(
            "user_b",
            "org_r",
            pb::WatchChannelRequest {
                channel_id: ch.clone(),
                resume_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(what(&next(&mut on_second).await), "caught up");
    let mut on_first = watch(&env, "user_c", "org_r", &ch, "").await;
    assert_eq!(what(&next(&mut on_first).await), "caught up");

    // Four writers at once, on the first replica.
    let writers = (0..4).map(|w| {
        let env = &env;
        let ch = ch.clone();
        async move {
            for i in 0..25 {
                post(env, "org_r", &ch, &format!("w{w}-{i}")).await;
            }
        }
    });
    futures::future::join_all(writers).await;
    let committed: Vec<String> = {
        let mut c = env.client().await;
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = c
                .list_messages(env.member(
                    "user_b",
                    "org_r",
                    pb::ListMessagesRequest {
                        channel_id: ch.clone(),
                        page_size: 500,
                        page_token: token,
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            all.extend(page.messages.into_iter().map(|m| m.body));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        all.sort();
        all
    };
    assert_eq!(committed.len(), 100);
    // What the change log holds for the channel, in order.
    let logged: Vec<i64> = {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Seq {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            seq: i64,
        }
        let rows: Vec<Seq> = diesel::sql_query(format!(
            "SELECT seq FROM change_log WHERE channel_id = '{ch}' ORDER BY seq"
        ))
        .load(&mut *env.conn().await)
        .await
        .unwrap();
        rows.into_iter().map(|r| r.seq).collect()
    };
    assert_eq!(logged.len(), 100);
    for stream in [&mut on_first, &mut on_second] {
        let mut got = Vec::new();
        let mut tokens = Vec::new();
        for _ in 0..100 {
            let e = next(stream).await;
            tokens.push(
                e.resume_token
                    .rsplit('.')
                    .next()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap(),
            );
            got.push(what(&e).trim_start_matches("posted ").to_owned());
        }
        assert_eq!(
            tokens, logged,
            "every change of the log, once, in the log's (commit) order"
        );
        got.sort();
        assert_eq!(got, committed, "each change once");
    }
}

#[tokio::test]
async fn a_client_that_falls_behind_is_ended_and_resumes() {
    let env = start_custom(false, |c| c.watch.watch_buffer_bytes = 64 * 1024).await;
    let ch = channel(&env, "org_s", "live").await;
    let mut slow = narrow_watch(&env, "user_b", "org_s", &ch, "").await;
    let caught_up = next(&mut slow).await;
    // Large messages fill the HTTP/2 window quickly; then the stream's buffer fills.
    let body = "x".repeat(9_000);
    for i in 0..120 {
        post(&env, "org_s", &ch, &format!("{i} {body}")).await;
    }
    let (delivered, status) = drain(&mut slow).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        delivered < 80,
        "ended before it had everything: {delivered}"
    );
    // Resuming from the start gets all 80.
    let mut again = watch(&env, "user_b", "org_s", &ch, &caught_up.resume_token).await;
    let mut n = 0;
    while what(&next(&mut again).await) != "caught up" {
        n += 1;
    }
    assert_eq!(n, 120);
}

/// A watch of `channel` by `user` on a connection with 16 KiB HTTP/2 windows: what the client
/// does not read backs up to the server.
pub(crate) async fn narrow_watch(
    env: &Env,
    user: &str,
    org: &str,
    channel: &str,
    token: &str,
) -> Streaming<pb::ChannelEvent> {
    watch_through(narrow_client(env).await, env, user, org, channel, token).await
}

/// A client on a connection with 16 KiB HTTP/2 windows.
async fn narrow_client(
    env: &Env,
) -> pb::workspace_service_client::WorkspaceServiceClient<tonic::transport::Channel> {
    let narrow = tonic::transport::Endpoint::from_shared(format!("http://{}", env.server.addr))
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    pb::workspace_service_client::WorkspaceServiceClient::new(narrow)
}

/// A channel of `org` with a caught-up watch of it, `posts` posts of 9 KB, and a second watch
/// from before them through a client with a 16 KiB window that does not read: it stays in its
/// backlog, far larger (from 40 posts) than its window, its buffer and what the HTTP/2 layer
/// holds together. Returns both watches and the second's position.
async fn behind_a_backlog(
    env: &Env,
    org: &str,
    posts: usize,
) -> (
    Streaming<pb::ChannelEvent>,
    Streaming<pb::ChannelEvent>,
    i64,
) {
    let ch = channel(env, org, "live").await;
    let mut caught = watch(env, "user_b", org, &ch, "").await;
    let start = next(&mut caught).await.resume_token;
    let body = "x".repeat(9_000);
    for i in 0..posts {
        post(env, org, &ch, &format!("{i} {body}")).await;
    }
    for _ in 0..posts {
        next(&mut caught).await;
    }
    let behind = narrow_watch(env, "user_b", org, &ch, &start).await;
    let position = start.rsplit('.').next().unwrap().parse().unwrap();
    (caught, behind, position)
}

/// Reads `s` to its end: how many events came, and the status it ended with.
pub(crate) async fn drain(s: &mut Streaming<pb::ChannelEvent>) -> (usize, tonic::Status) {
    let mut delivered = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .unwrap_or_else(|_| panic!("stuck after {delivered}"))
        {
            Ok(Some(_)) => delivered += 1,
            Ok(None) => panic!("the stream ended without a status after {delivered}"),
            Err(status) => return (delivered, status),
        }
    }
}

/// Ended as deleted: PERMISSION_DENIED with the deletion's message (a re-check, every 30 s,
/// would say the channel is not found; a gap in the log, that the resume token is too old).
fn ended_as_deleted(status: &tonic::Status) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("was deleted"), "{status:?}");
}

/// A watch still reading its backlog when its workspace is deleted and purged finds only the
/// deletion left in the log after its position: it ends as deleted, not as a resume token too
/// old. A caught-up watch of a channel ends with the deletion, not at its next re-check.
#[tokio::test]
async fn a_watch_behind_a_purged_deletion_ends_as_deleted() {
    let env = start_custom(false, |c| c.watch.watch_buffer_bytes = 64 * 1024).await;
    let (mut caught, mut behind, _) = behind_a_backlog(&env, "org_p", 40).await;
    env.client()
        .await
        .delete_workspace(env.service(delete_ws("del-org_p", 100, "org_p")))
        .await
        .unwrap();
    env.purges_done().await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM change_log").await,
        1,
        "the purge left only the deletion"
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), caught.message())
        .await
        .expect("the caught-up watch ends with its workspace")
        .unwrap_err();
    ended_as_deleted(&ended);
    let (delivered, ended) = drain(&mut behind).await;
    assert!(delivered < 40, "read the whole backlog first: {delivered}");
    ended_as_deleted(&ended);
}

/// The same while the purge is under way: it deletes the log in storage order, so the first
/// change after the watch's gap need not be the deletion; and a write that passed its access
/// check as the deletion committed may be numbered after it, so the deletion need not be last.
#[tokio::test]
async fn a_watch_behind_a_purge_in_progress_ends_as_deleted() {
    // One purge lane, held at the messages (its first piece): the log keeps what the test
    // leaves in it.
    let env = start_custom(false, |c| {
        c.watch.watch_buffer_bytes = 64 * 1024;
        c.purge.purge_lanes = 1;
    })
    .await;
    let mut watches = Vec::new();
    for org in ["org_h", "org_l"] {
        watches.push(behind_a_backlog(&env, org, 100).await);
    }
    let blocker = env.block_purges().await;
    for ((org, written_after), (_caught, mut behind, at)) in
        [("org_h", false), ("org_l", true)].into_iter().zip(watches)
    {
        env.client()
            .await
            .delete_workspace(env.service(delete_ws(&format!("del-{org}"), 100, org)))
            .await
            .unwrap();
        let this =
            format!("workspace_id = (SELECT id FROM workspaces WHERE clerk_org_id = '{org}')");
        if written_after {
            env.sql(&format!(
                "INSERT INTO change_log (workspace_id, seq, channel_id, payload)
                 SELECT workspace_id, seq + 2, channel_id, payload FROM change_log
                  WHERE {this} AND seq = {at} + 100"
            ))
            .await;
        }
        // A chunk of the purge: a hole from the watch's position on, past what it holds in
        // its buffers, posts kept after it.
        env.sql(&format!(
            "DELETE FROM change_log WHERE {this} AND seq BETWEEN {at} + 1 AND {at} + 90"
        ))
        .await;
        assert_eq!(
            env.scalar(&format!(
                "SELECT count(*) FROM change_log WHERE {this} AND seq > {at} + 90"
            ))
            .await,
            11 + i64::from(written_after),
            "{org}: ten posts, the deletion (and the late post) after the hole"
        );
        let (delivered, ended) = drain(&mut behind).await;
        assert!(
            delivered < 90,
            "{org}: only what it held before the hole: {delivered}"
        );
        ended_as_deleted(&ended);
    }
    drop(blocker);
}

/// A workspace's watch still reading its backlog when the workspace is deleted and purged
/// gets the deletion's event, which the purge kept, and then ends as deleted.
#[tokio::test]
async fn a_workspace_watch_behind_a_purged_deletion_gets_the_deletion() {
    let env = start_custom(false, |c| c.watch.watch_buffer_bytes = 64 * 1024).await;
    let ws: uuid::Uuid = env.workspace("org_wb").await.id.parse().unwrap();
    env.client()
        .await
        .create_channel(env.admin(
            "user_a",
            "org_wb",
            pb::CreateChannelRequest {
                clerk_org_id: "org_wb".into(),
                name: "news".into(),
            },
        ))
        .await
        .unwrap();
    // A backlog far beyond the watch's buffer and its 16 KiB window: the channel's creation,
    // recorded 5,000 times more.
    env.sql(&format!(
        "INSERT INTO change_log (workspace_id, seq, channel_id, payload)
         SELECT workspace_id, seq + g, NULL, payload
           FROM change_log, generate_series(1, 5000) g WHERE workspace_id = '{ws}';
         UPDATE change_heads SET seq = seq + 5000 WHERE workspace_id = '{ws}'"
    ))
    .await;
    let mut w = narrow_client(&env)
        .await
        .watch_workspace(env.member(
            "user_b",
            "org_wb",
            pb::WatchWorkspaceRequest {
                clerk_org_id: "org_wb".into(),
                resume_token: format!("{}.0", ws.simple()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    env.client()
        .await
        .delete_workspace(env.service(delete_ws("del-org_wb", 100, "org_wb")))
        .await
        .unwrap();
    env.purges_done().await;
    assert_eq!(env.count("change_log").await, 1, "only the deletion left");
    let mut got = Vec::new();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("the watch goes on or ends")
        {
            Ok(Some(e)) => got.push(said(&e)),
            Ok(None) => panic!("ended without a status after {}", got.len()),
            Err(status) => break status,
        }
    };
    assert!(
        got.len() < 5000,
        "read the whole backlog first: {}",
        got.len()
    );
    assert_eq!(got.last().map(String::as_str), Some("workspace deleted"));
    ended_as_deleted(&ended);
}

#[tokio::test]
async fn expiry_and_a_deleted_workspace_end_the_stream() {
    let env = start_custom(false, |c| c.watch.watch_access_recheck_secs = 1).await;
    let ch = channel(&env, "org_e", "live").await;
    // A token that expires in 2 s.
    let org = stand_ins::OrgClaim {
        id: "org_e".into(),
        role: "org:member".into(),
        slug: String::new(),
    };
    let mut claims = env
        .issuers
        .clerk
        .claims("user_b", "B", "b@example.com", Some(&org));
    claims["exp"] = serde_json::json!(token_auth::signing::now_secs() + 2);
    let short = env.issuers.clerk.sign(&claims);
    // Opens a watch with `token` and returns how the stream ended.
    let ends = |token: String| {
        let (env, ch) = (&env, ch.clone());
        async move {
            let mut s = env
                .client()
                .await
                .watch_channel(service_harness::bearer(
                    pb::WatchChannelRequest {
                        channel_id: ch,
                        resume_token: String::new(),
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(what(&next(&mut s).await), "caught up");
            tokio::time::timeout(Duration::from_secs(10), s.message())
                .await
                .unwrap()
                .unwrap_err()
        }
    };
    let ended = ends(short).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("resume token"));

    // A service's token ends its streams too.
    let minter = token_auth::signing::ServiceTokenMinter::new(
        token_auth::signing::SigningKey::from_pem(
            &std::fs::read_to_string(env.issuers.keys.signing_key_file()).unwrap(),
        )
        .unwrap(),
        "vbase-internal",
        service_harness::INTERNAL_CALLER,
        Duration::from_secs(2),
    );
    let ended = ends(minter.token_for("workspace-service").unwrap()).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");

    let mut w = watch(&env, "user_c", "org_e", &ch, "").await;
    assert_eq!(what(&next(&mut w).await), "caught up");
    env.client()
        .await
        .delete_workspace(env.service(delete_ws("del-org_e", 100, "org_e")))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
}

/// What a workspace event says, briefly.
fn said(e: &pb::WorkspaceEvent) -> String {
    use pb::workspace_event::Event as W;
    match e.event.as_ref().unwrap() {
        W::ChannelCreated(c) => format!("channel created {}", c.name),
        W::ChannelRenamed(c) => format!("channel renamed {}", c.name),
        W::ChannelDeleted(_) => "channel deleted".into(),
        W::RoomCreated(r) => format!("room created {}", r.name),
        W::RoomRenamed(r) => format!("room renamed {}", r.name),
        W::RoomDeleted(_) => "room deleted".into(),
        W::ItemCreated(i) => format!("item created {}", i.name),
        W::ItemRenamed(i) => format!("item renamed {}", i.name),
        W::ItemDeleted(_) => "item deleted".into(),
        W::MeetingScheduled(m) => format!("meeting scheduled {}", m.title),
        W::MeetingCancelled(_) => "meeting cancelled".into(),
        W::MemberChanged(m) => format!("member {} {}", m.clerk_user_id, m.role),
        W::MemberRemoved(u) => format!("member removed {u}"),
        W::WorkspaceRenamed(w) => format!("workspace renamed {}", w.name),
        W::WorkspaceDeleted(_) => "workspace deleted".into(),
        W::CaughtUp(_) => "caught up".into(),
    }
}

#[tokio::test]
async fn a_workspace_watcher_hears_its_structure_change_until_it_is_deleted() {
    let env = start_with(false).await;
    env.workspace("org_ww").await;
    let mut w = env
        .client()
        .await
        .watch_workspace(env.member(
            "user_b",
            "org_ww",
            pb::WatchWorkspaceRequest {
                clerk_org_id: "org_ww".into(),
                resume_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(said(&first), "caught up");

    let mut c = env.client().await;
    let admin = |m| env.admin("user_a", "org_ww", m);
    let ch = c
        .create_channel(admin(pb::CreateChannelRequest {
            clerk_org_id: "org_ww".into(),
            name: "news".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    c.rename_channel(env.admin(
        "user_a",
        "org_ww",
        pb::RenameChannelRequest {
            channel_id: ch.id.clone(),
            name: "updates".into(),
        },
    ))
    .await
    .unwrap();
    // A message is the channel's, not the workspace's.
    post(&env, "org_ww", &ch.id, "hello").await;
    c.delete_channel(env.admin(
        "user_a",
        "org_ww",
        pb::DeleteChannelRequest {
            channel_id: ch.id.clone(),
        },
    ))
    .await
    .unwrap();
    let docs = c
        .create_room(env.admin(
            "user_a",
            "org_ww",
            pb::CreateRoomRequest {
                clerk_org_id: "org_ww".into(),
                kind: pb::RoomKind::Document.into(),
                name: "docs".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    let item = c
        .create_room_item(env.admin(
            "user_a",
            "org_ww",
            pb::CreateRoomItemRequest {
                room_id: docs.id.clone(),
                kind: pb::ItemKind::Document.into(),
                name: "plan".into(),
                language: String::new(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    c.delete_room_item(env.admin(
        "user_a",
        "org_ww",
        pb::DeleteRoomItemRequest {
            item_id: item.id.clone(),
            kind: pb::ItemKind::Document.into(),
        },
    ))
    .await
    .unwrap();
    c.delete_room(env.admin(
        "user_a",
        "org_ww",
        pb::DeleteRoomRequest {
            room_id: docs.id.clone(),
        },
    ))
    .await
    .unwrap();
    c.upsert_membership(env.service(membership("m-c", 10, "org_ww", "user_c", "org:member")))
        .await
        .unwrap();
    c.upsert_workspace(env.service(upsert_ws("rename-org_ww", 20, "org_ww", "Renamed")))
        .await
        .unwrap();
    // Everything up to the rename is heard before the deletion: the purge that follows a
    // deletion leaves only the deletion in the log, so a hub that reads the log after it
    // (it waits for the read caches first) would find a gap.
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("workspace renamed Renamed") {
        match tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .unwrap()
        {
            Ok(Some(e)) => got.push(said(&e)),
            other => panic!("{other:?} after {got:?}"),
        }
    }
    c.delete_workspace(env.service(delete_ws("del-org_ww", 100, "org_ww")))
        .await
        .unwrap();

    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .unwrap()
        {
            Ok(Some(e)) => got.push(said(&e)),
            Ok(None) => panic!("ended without a status after {got:?}"),
            Err(s) => break s,
        }
    };
    assert_eq!(
        got,
        [
            "channel created news",
            "channel renamed updates",
            "channel deleted",
            "room created docs",
            "item created plan",
            "item deleted",
            "room deleted",
            "member user_c org:member",
            "workspace renamed Renamed",
            "workspace deleted",
        ],
        "{end:?}"
    );
    assert_eq!(end.code(), Code::PermissionDenied);
    assert!(end.message().contains("deleted"), "{end:?}");
}

#[tokio::test]
async fn a_removed_member_loses_the_stream_and_a_replica_caps_its_streams() {
    let env = start_custom(false, |c| {
        c.watch.watch_access_recheck_secs = 1;
        c.watch.watch_max_streams = 2;
    })
    .await;
    let ch = channel(&env, "org_m", "live").await;
    let mut c = env.client().await;
    c.upsert_membership(env.service(membership("m-b", 10, "org_m", "user_b", "org:member")))
        .await
        .unwrap();
    // The token was issued before the removal: the revocation rules refuse it from then on.
    let mut s = watch(&env, "user_b", "org_m", &ch, "").await;
    assert_eq!(what(&next(&mut s).await), "caught up");
    let mut other = watch(&env, "user_c", "org_m", &ch, "").await;
    assert_eq!(what(&next(&mut other).await), "caught up");
    // Two streams open: the replica's cap.
    let full = c
        .watch_channel(env.member(
            "user_d",
            "org_m",
            pb::WatchChannelRequest {
                channel_id: ch.clone(),
                resume_token: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::Unavailable, "{full:?}");
    assert!(full.message().contains("WATCH_MAX_STREAMS"));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.delete_membership(env.service(pb::DeleteMembershipCommand {
        event_id: "m-b-del".into(),
        occurred_at: ts(T0 + 20),
        clerk_org_id: "org_m".into(),
        clerk_user_id: "user_b".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    // Its slot is free again.
    let mut again = watch(&env, "user_d", "org_m", &ch, "").await;
    assert_eq!(what(&next(&mut again).await), "caught up");
}

/// A removal ends the removed member's streams when its change reaches them, not at their
/// next periodic check (an hour here); other members' streams go on.
#[tokio::test]
async fn a_removed_members_streams_end_with_the_removal_not_at_the_next_check() {
    let env = start_custom(false, |c| c.watch.watch_access_recheck_secs = 3600).await;
    let ch = channel(&env, "org_r", "live").await;
    let mut c = env.client().await;
    c.upsert_membership(env.service(membership("m-b", 10, "org_r", "user_b", "org:member")))
        .await
        .unwrap();
    let mut s = watch(&env, "user_b", "org_r", &ch, "").await;
    assert_eq!(what(&next(&mut s).await), "caught up");
    let mut other = watch(&env, "user_c", "org_r", &ch, "").await;
    assert_eq!(what(&next(&mut other).await), "caught up");
    c.delete_membership(env.service(pb::DeleteMembershipCommand {
        event_id: "m-b-del".into(),
        occurred_at: ts(T0 + 20),
        clerk_org_id: "org_r".into(),
        clerk_user_id: "user_b".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("the stream ended with the removal")
        .unwrap_err();
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    post(&env, "org_r", &ch, "still here").await;
    assert_eq!(what(&next(&mut other).await), "posted still here");
}

/// A stream outlives its call, so opening one is decided on the database, never on the
/// replica's access cache: a removal the replica has not heard of yet (its notification still
/// on the way) opens none, even while the cache still lets the member read.
#[tokio::test]
async fn a_removal_not_heard_yet_opens_no_stream() {
    let env = start_with(false).await;
    let ch = channel(&env, "org_h", "live").await;
    let mut c = env.client().await;
    c.upsert_membership(env.service(membership("m-b", 10, "org_h", "user_b", "org:member")))
        .await
        .unwrap();
    let list = || {
        env.member(
            "user_b",
            "org_h",
            pb::ListChannelsRequest {
                clerk_org_id: "org_h".into(),
                ..Default::default()
            },
        )
    };
    // The removal, unheard: the cache goes on letting the member read.
    remove_unheard(&env, &mut c, "user_b", list).await;
    let refused = c
        .watch_channel(env.member(
            "user_b",
            "org_h",
            pb::WatchChannelRequest {
                channel_id: ch,
                resume_token: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}

/// A watch whose caller's access cannot be checked (the database does not answer in time) is
/// not served past a second failed check: it ends with UNAVAILABLE, so the client opens it again
/// through a check that must pass.
#[tokio::test]
async fn a_watch_whose_access_cannot_be_checked_ends() {
    let env = start_custom(false, |c| {
        c.watch.watch_access_recheck_secs = 1;
        c.service.db.db_statement_timeout_ms = 200;
    })
    .await;
    let ch = channel(&env, "org_u", "live").await;
    let mut w = watch(&env, "user_u", "org_u", &ch, "").await;
    assert_eq!(what(&next(&mut w).await), "caught up");
    // Every check reads the channel's row: held, each one times out.
    let _held = env
        .hold("LOCK TABLE channels IN ACCESS EXCLUSIVE MODE")
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("the watch ends")
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("resume token"), "{ended:?}");
}
