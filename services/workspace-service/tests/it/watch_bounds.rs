//! What bounds a watch: the access re-check during the backlog too, one pooled connection per
//! open, a cap per user, opens per minute, and a stream that ended holds no events.

use crate::support::*;
use crate::watch::{channel, drain, narrow_watch, next, post, watch, what};
use std::time::Duration;
use tonic::Code;
use vbase_proto::workspace::v1 as pb;

#[tokio::test]
async fn a_removed_member_reading_an_old_backlog_is_ended_before_the_rest() {
    let env = start_custom(false, |c| c.watch.watch_access_recheck_secs = 1).await;
    let ch = channel(&env, "org_rb", "live").await;
    env.client()
        .await
        .upsert_membership(env.service(membership("m-b", 10, "org_rb", "user_b", "org:member")))
        .await
        .unwrap();
    let start = next(&mut watch(&env, "user_b", "org_rb", &ch, "").await)
        .await
        .resume_token;
    let body = "x".repeat(9_000);
    for i in 0..100 {
        post(&env, "org_rb", &ch, &format!("{i} {body}")).await;
    }
    // B resumes from before all of it and reads slowly: the backlog is far from sent.
    let mut slow = narrow_watch(&env, "user_b", "org_rb", &ch, &start).await;
    assert!(what(&next(&mut slow).await).starts_with("posted 0 "));
    env.client()
        .await
        .delete_membership(env.service(pb::DeleteMembershipCommand {
            event_id: "m-b-del".into(),
            occurred_at: ts(T0 + 20),
            clerk_org_id: "org_rb".into(),
            clerk_user_id: "user_b".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    // Re-checked every second, backlog or not: ended while the client still reads nothing.
    env.metric_reaches("workspace_watch_ends_total{reason=\"denied\"}", |v| {
        v == 1.0
    })
    .await;
    let (delivered, status) = drain(&mut slow).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        delivered < 20,
        "{delivered} of the backlog's 99 left reached a removed member"
    );
}

#[tokio::test]
async fn forty_watch_opens_at_once_on_a_fresh_replica_with_a_small_pool_are_all_served() {
    let env = start_custom(false, |c| {
        c.service.db.db_pool_size = 2;
        c.purge.purge_concurrency = 1;
        c.purge.purge_lanes = 1;
    })
    .await;
    let ch = channel(&env, "org_40", "live").await;
    // Nobody watched this workspace here yet: every open reads where its log ends.
    let opens = (0..40).map(|i| {
        let (env, ch) = (&env, ch.clone());
        async move {
            let mut s = env
                .client()
                .await
                .watch_channel(env.member(
                    &format!("user_w{i}"),
                    "org_40",
                    pb::WatchChannelRequest {
                        channel_id: ch,
                        resume_token: String::new(),
                    },
                ))
                .await?
                .into_inner();
            let first = tokio::time::timeout(Duration::from_secs(10), s.message())
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("no caught_up in 10 s"))??;
            Ok::<_, tonic::Status>((s, first.map(|e| what(&e))))
        }
    });
    let started = std::time::Instant::now();
    let opened = futures::future::join_all(opens).await;
    let mut streams = Vec::new();
    for o in opened {
        let (s, first) = o.expect("every open is served");
        assert_eq!(first.as_deref(), Some("caught up"));
        streams.push(s);
    }
    // The pool's wait (5 s) never ran out.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    post(&env, "org_40", &ch, "to all").await;
    for s in &mut streams {
        assert_eq!(what(&next(s).await), "posted to all");
    }
}

#[tokio::test]
async fn a_user_has_a_cap_of_open_watches_and_of_opens_per_minute() {
    let env = start_custom(false, |c| {
        c.watch.watch_max_per_user = 2;
        c.watch.calls.user_watch_opens_per_minute = 4;
    })
    .await;
    let ch = channel(&env, "org_cap", "live").await;
    let open = |user: &str| {
        let (env, ch, user) = (&env, ch.clone(), user.to_owned());
        async move {
            env.client()
                .await
                .watch_channel(env.member(
                    &user,
                    "org_cap",
                    pb::WatchChannelRequest {
                        channel_id: ch,
                        resume_token: String::new(),
                    },
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    let mut first = open("user_b").await.unwrap();
    let _second = open("user_b").await.unwrap();
    let capped = open("user_b").await.unwrap_err();
    assert_eq!(capped.code(), Code::ResourceExhausted, "{capped:?}");
    assert!(
        capped.message().contains("WATCH_MAX_PER_USER"),
        "{capped:?}"
    );
    // Another user is not affected.
    let mut other = open("user_c").await.unwrap();
    assert_eq!(what(&next(&mut other).await), "caught up");
    // A closed watch frees its place.
    assert_eq!(what(&next(&mut first).await), "caught up");
    drop(first);
    env.metric_reaches("workspace_watch_ends_total{reason=\"gone\"}", |v| v == 1.0)
        .await;
    let _third = open("user_b").await.expect("a place is free again");
    // Four opens a minute: the fifth is refused with when to retry.
    let rated = open("user_b").await.unwrap_err();
    assert_eq!(rated.code(), Code::ResourceExhausted, "{rated:?}");
    assert!(
        rated.message().contains("too many watch opens"),
        "{rated:?}"
    );
    assert!(rated.metadata().get("retry-after").is_some());
}

#[tokio::test]
async fn a_stream_whose_client_does_not_read_ends_and_holds_no_events() {
    let env = start_custom(false, |c| c.watch.watch_buffer_bytes = 64 * 1024).await;
    let ch = channel(&env, "org_nr", "live").await;
    let mut stuck = narrow_watch(&env, "user_b", "org_nr", &ch, "").await;
    assert_eq!(what(&next(&mut stuck).await), "caught up");
    let body = "y".repeat(9_000);
    for i in 0..40 {
        post(&env, "org_nr", &ch, &format!("{i} {body}")).await;
    }
    env.metric_reaches("workspace_watch_ends_total{reason=\"behind\"}", |v| {
        v == 1.0
    })
    .await;
    // The client is still connected, and reads nothing: what the replica still holds of the
    // stream is what HTTP/2 was sending (a frame or two), not its queue.
    let held = env
        .metric("workspace_watch_buffered_bytes")
        .await
        .expect("the gauge");
    assert!(held < 32.0 * 1024.0, "{held} bytes held after the end");
    let (delivered, status) = drain(&mut stuck).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(delivered < 40, "{delivered}");
}

#[tokio::test]
async fn past_the_replicas_watch_memory_the_streams_that_are_behind_end_and_the_others_go_on() {
    let env = start_custom(false, |c| {
        c.watch.watch_buffer_bytes = 1024 * 1024;
        c.watch.watch_memory_bytes = 1024 * 1024;
    })
    .await;
    let mut channels = Vec::new();
    for name in ["a", "b", "c", "d"] {
        env.workspace("org_mem").await;
        channels.push(
            env.client()
                .await
                .create_channel(env.admin(
                    "user_a",
                    "org_mem",
                    pb::CreateChannelRequest {
                        clerk_org_id: "org_mem".into(),
                        name: name.into(),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .channel
                .unwrap()
                .id,
        );
    }
    // Three clients that stop reading, on three channels; one that reads, on the fourth.
    let mut stuck = Vec::new();
    for (i, ch) in channels[..3].iter().enumerate() {
        let mut s = narrow_watch(&env, &format!("user_s{i}"), "org_mem", ch, "").await;
        assert_eq!(what(&next(&mut s).await), "caught up");
        stuck.push(s);
    }
    let mut reader = watch(&env, "user_r", "org_mem", &channels[3], "").await;
    assert_eq!(what(&next(&mut reader).await), "caught up");
    // And one that keeps reading on a loaded channel, while the replica is over its memory:
    // each of its frames is queued, then read at once.
    let mut steady = watch(&env, "user_k", "org_mem", &channels[0], "").await;
    assert_eq!(what(&next(&mut steady).await), "caught up");
    let steady = tokio::spawn(async move {
        for n in 0..100 {
            match steady.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("ended without a status after {n}")),
                Err(status) => return Err(format!("ended after {n}: {status:?}")),
            }
        }
        Ok(steady)
    });
    // Each stuck stream alone stays within its 1 MiB; together they pass the replica's 1 MiB,
    // again and again (2.7 MB posted in all).
    let body = "m".repeat(9_000);
    for i in 0..100 {
        for ch in &channels[..3] {
            post(&env, "org_mem", ch, &format!("{i} {body}")).await;
        }
    }
    let mut steady = tokio::time::timeout(Duration::from_secs(30), steady)
        .await
        .expect("the reader read every post")
        .unwrap()
        .expect("a client that reads is never ended for the replica's memory");
    env.metric_reaches("workspace_watch_ends_total{reason=\"memory\"}", |v| {
        v >= 2.0
    })
    .await;
    let held = env.metric("workspace_watch_buffered_bytes").await.unwrap();
    assert!(held <= 1.1 * 1024.0 * 1024.0, "{held} bytes held");
    post(&env, "org_mem", &channels[3], "still live").await;
    assert_eq!(what(&next(&mut reader).await), "posted still live");
    post(&env, "org_mem", &channels[0], "steady").await;
    assert_eq!(what(&next(&mut steady).await), "posted steady");
}

/// A client that reads keeps its stream while the replica is over WATCH_MEMORY_BYTES, even
/// right after a push of a whole piece of its backlog; a client that stopped reading is ended.
#[tokio::test]
async fn past_the_replicas_watch_memory_a_client_reading_its_backlog_goes_on() {
    let env = start_custom(false, |c| {
        c.watch.watch_buffer_bytes = 1024 * 1024;
        c.watch.watch_memory_bytes = 1024 * 1024;
    })
    .await;
    let main = channel(&env, "org_bk", "main").await;
    let side = channel(&env, "org_bk", "side").await;
    // A client that stops reading holds about 270 KB.
    let mut stuck = narrow_watch(&env, "user_s", "org_bk", &side, "").await;
    assert_eq!(what(&next(&mut stuck).await), "caught up");
    let body = "b".repeat(9_000);
    for i in 0..30 {
        post(&env, "org_bk", &side, &format!("side {i} {body}")).await;
    }
    // The stuck client is behind before the reader comes: its events are held (about 266 KB
    // once the fan-out queued all 30) and the oldest has gone unread past the grace. Otherwise
    // it is judged only once that grace passes, and a reader quick enough has already brought
    // the replica back under its memory: nothing is over, nothing ends.
    env.metric_reaches("workspace_watch_buffered_bytes", |v| v >= 250_000.0)
        .await;
    tokio::time::sleep(workspace_service::live::outbox::UNREAD_GRACE + Duration::from_millis(200))
        .await;
    let token = next(&mut watch(&env, "user_k", "org_bk", &main, "").await)
        .await
        .resume_token;
    for i in 0..115 {
        post(&env, "org_bk", &main, &format!("{i} {body}")).await;
    }
    // Resumed, the reader's first piece of backlog (up to its 1 MiB budget) takes the replica
    // past its 1 MiB: it is read at once, so the stream goes on.
    let mut reader = watch(&env, "user_k", "org_bk", &main, &token).await;
    for i in 0..115 {
        let event = tokio::time::timeout(Duration::from_secs(10), reader.message())
            .await
            .expect("an event within 10 s")
            .unwrap_or_else(|s| panic!("the reader was ended after {i}: {s:?}"))
            .expect("the stream goes on");
        assert!(
            what(&event).starts_with(&format!("posted {i} ")),
            "{i}: {}",
            what(&event)
        );
    }
    assert_eq!(what(&next(&mut reader).await), "caught up");
    // It was behind at its end: reset, not sent trailers it could not receive.
    env.metric_reaches("workspace_watch_ends_total{reason=\"memory\"}", |v| {
        v == 1.0
    })
    .await;
    let (_, status) = drain(&mut stuck).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        reset(&status),
        Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{status:?}"
    );
    post(&env, "org_bk", &main, "live").await;
    assert_eq!(what(&next(&mut reader).await), "posted live");
}

/// Past three quarters of WATCH_MAX_STREAMS, a user holding 4 watches opens no more: the last
/// quarter is kept for users who have few, so a few accounts cannot take every stream.
#[tokio::test]
async fn a_crowded_replica_keeps_its_last_streams_for_users_who_have_few() {
    let env = start_custom(false, |c| {
        c.watch.watch_max_streams = 8;
        c.watch.watch_max_per_user = 7;
    })
    .await;
    let ch = channel(&env, "org_fs", "live").await;
    let open = |user: &'static str| {
        let (env, ch) = (&env, ch.clone());
        async move {
            env.client()
                .await
                .watch_channel(env.member(
                    user,
                    "org_fs",
                    pb::WatchChannelRequest {
                        channel_id: ch,
                        resume_token: String::new(),
                    },
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(open("user_b").await.expect("below three quarters"));
    }
    let refused = open("user_b").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("most of its watch"),
        "{refused:?}"
    );
    // Users with fewer than 4 still get the last streams.
    held.push(open("user_c").await.expect("a first watch"));
    held.push(open("user_d").await.expect("a first watch"));
    let full = open("user_e").await.unwrap_err();
    assert_eq!(full.code(), Code::Unavailable, "{full:?}");
}

/// Two watches whose client stops reading (HTTP/2, 16 KiB windows) fall behind and are ended:
/// each is reset rather than left with trailers it cannot receive, and each keeps its user's
/// place until its response is gone.
#[tokio::test]
async fn an_ended_stream_whose_client_is_behind_is_reset_and_keeps_its_place_until_it_goes() {
    let env = start_custom(false, |c| {
        c.watch.watch_buffer_bytes = 64 * 1024;
        c.watch.watch_max_per_user = 2;
    })
    .await;
    let ch = channel(&env, "org_rs", "live").await;
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let mut s = narrow_watch(&env, "user_b", "org_rs", &ch, "").await;
        assert_eq!(what(&next(&mut s).await), "caught up");
        stuck.push(s);
    }
    let body = "r".repeat(9_000);
    for i in 0..40 {
        post(&env, "org_rs", &ch, &format!("{i} {body}")).await;
    }
    env.metric_reaches("workspace_watch_ends_total{reason=\"behind\"}", |v| {
        v == 2.0
    })
    .await;
    // Ended, but hyper still holds each response (a frame waits for window): they still
    // count.
    let open = || async {
        env.client()
            .await
            .watch_channel(env.member(
                "user_b",
                "org_rs",
                pb::WatchChannelRequest {
                    channel_id: ch.clone(),
                    resume_token: String::new(),
                },
            ))
            .await
            .map(|r| r.into_inner())
    };
    let capped = open().await.unwrap_err();
    assert_eq!(capped.code(), Code::ResourceExhausted, "{capped:?}");
    assert!(
        capped.message().contains("WATCH_MAX_PER_USER"),
        "{capped:?}"
    );
    // Once the client reads again, the stream is reset: no trailers.
    let (delivered, status) = drain(&mut stuck[0]).await;
    assert!(delivered < 40, "{delivered}");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        reset(&status),
        Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{status:?}"
    );
    // Its response is gone: its place is free.
    let mut again = eventually_open(open).await;
    assert_eq!(what(&next(&mut again).await), "caught up");
}

/// The reason of the HTTP/2 stream reset that ended a call, if one did.
fn reset(status: &tonic::Status) -> Option<h2::Reason> {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        source = e.source();
    }
    None
}

/// Retries `open` for a few seconds until it is served.
async fn eventually_open<F, Fut, T>(open: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match open().await {
            Ok(t) => return t,
            Err(s) if std::time::Instant::now() < deadline => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("still refused: {s:?}"),
        }
    }
}

/// Over HTTP/1.1 gRPC-Web (as through the ingress), watches whose client never reads fill
/// hyper's write buffer. While their responses are held they count against the user's cap;
/// once they fall behind and end, their connections are closed, so what hyper held is freed,
/// not kept until the connection's maximum age.
#[tokio::test]
async fn over_http1_a_watch_that_ends_unread_closes_its_connection_and_frees_what_it_held() {
    let env = start_custom(false, |c| {
        c.watch.watch_buffer_bytes = 64 * 1024;
        c.watch.watch_max_per_user = 3;
    })
    .await;
    let ch = channel(&env, "org_h1", "live").await;
    let mut stuck = Vec::new();
    for _ in 0..3 {
        let (head, conn) = h1_watch(&env, "user_b", "org_h1", &ch, WEB).await;
        assert_eq!(grpc_status(&head), None, "{head}");
        stuck.push(conn);
    }
    let (refused, _) = h1_watch(&env, "user_b", "org_h1", &ch, WEB).await;
    assert_eq!(grpc_status(&refused), Some("8"), "{refused}");
    // Until they fall behind: past what the sockets take (the kernel's send buffer grows to
    // a few MiB), hyper's write buffer (about 400 KiB) and the stream's 64 KiB.
    let body = "\u{1F600}".repeat(8_000);
    for i in 0..400 {
        post(&env, "org_h1", &ch, &format!("{i} {body}")).await;
        if i % 10 == 9
            && env
                .metric("workspace_watch_ends_total{reason=\"behind\"}")
                .await
                == Some(3.0)
        {
            break;
        }
    }
    env.metric_reaches("workspace_watch_ends_total{reason=\"behind\"}", |v| {
        v == 3.0
    })
    .await;
    // hyper held the events it had copied (counted: binary gRPC-Web shares the frames); with
    // the connections closed, nothing of them is left.
    env.metric_reaches("workspace_watch_buffered_bytes", |v| v < 64.0 * 1024.0)
        .await;
    // Each client, reading at last, finds its connection closed without a status.
    for conn in stuck {
        let rest = read_to_end(conn).await;
        assert!(
            !String::from_utf8_lossy(&rest).contains("grpc-status:"),
            "the end was sent"
        );
    }
    let (head, _open) = h1_watch(&env, "user_b", "org_h1", &ch, WEB).await;
    assert_eq!(grpc_status(&head), None, "a place is free: {head}");
}

/// The base64 form of gRPC-Web would copy every event outside the replica's count of live
/// bytes: watches refuse it, saying what to use.
#[tokio::test]
async fn a_watch_in_grpc_web_text_is_refused() {
    let env = start_custom(false, |_| {}).await;
    let ch = channel(&env, "org_tx", "live").await;
    let (head, _) = h1_watch(&env, "user_b", "org_tx", &ch, TEXT).await;
    assert_eq!(grpc_status(&head), Some("12"), "{head}");
    assert!(head.contains("binary"), "{head}");
}

/// gRPC-Web content types: binary, and base64 text.
const WEB: &str = "application/grpc-web+proto";
const TEXT: &str = "application/grpc-web-text";

/// Opens `WatchChannel` over HTTP/1.1 gRPC-Web (`kind`) on a socket with a small receive
/// buffer, and reads the response head only: (head, the connection, unread after it).
async fn h1_watch(
    env: &Env,
    user: &str,
    org: &str,
    channel: &str,
    kind: &str,
) -> (String, tokio::net::TcpStream) {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = env.member(
        user,
        org,
        pb::WatchChannelRequest {
            channel_id: channel.into(),
            resume_token: String::new(),
        },
    );
    let auth = req
        .metadata()
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap();
    let mut framed = service_harness::grpc_frame(req.get_ref()).to_vec();
    if kind == TEXT {
        framed = base64::engine::general_purpose::STANDARD
            .encode(&framed)
            .into_bytes();
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(env.server.addr).await.unwrap();
    let head = format!(
        "POST /vbase.workspace.v1.WorkspaceService/WatchChannel HTTP/1.1\r\nhost: {}\r\n\
         content-type: {kind}\r\naccept: {kind}\r\nx-grpc-web: 1\r\nauthorization: {auth}\r\n\
         content-length: {}\r\n\r\n",
        env.server.addr,
        framed.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&framed).await.unwrap();
    // The head, byte by byte, so nothing of the body is read.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut b))
            .await
            .expect("a response head within 10 s")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    (String::from_utf8(head).unwrap().to_lowercase(), conn)
}

/// The `grpc-status` of a (lowercased) response head: `None` for a stream that goes on.
fn grpc_status(head: &str) -> Option<&str> {
    head.lines()
        .find_map(|l| l.strip_prefix("grpc-status:"))
        .map(str::trim)
}

/// What is left on `conn` until the server closes it (within 10 s).
async fn read_to_end(mut conn: tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => rest.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection is still open after {} bytes",
        rest.len()
    );
    rest
}
