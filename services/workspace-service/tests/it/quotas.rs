//! What one user's calls may take of a replica: answers capped in bytes (a page ends early and
//! its token continues it), bodies capped in bytes, reads per minute, calls in flight, and the
//! size of a request.

use crate::support::*;
use crate::watch::{channel, post};
use prost::Message;
use std::time::Duration;
use tonic::Code;
use vbase_proto::workspace::v1 as pb;

fn list(channel: &str, token: &str) -> pb::ListMessagesRequest {
    pb::ListMessagesRequest {
        channel_id: channel.into(),
        page_size: 500,
        page_token: token.into(),
    }
}

/// Messages that fill a page's bytes exactly still say that older ones follow.
#[tokio::test]
async fn a_page_filled_to_its_last_byte_still_continues() {
    let env = start_custom(false, |c| c.watch.calls.response_max_bytes = 64 * 1024).await;
    let ch = channel(&env, "org_pe", "exact").await;
    post(&env, "org_pe", &ch, "old").await;
    // Each message costs its body, its author (`user_a`) and 157 bytes of fields: two of
    // 32,477-byte bodies fill the 65,280 bytes a 64 KiB answer leaves for rows exactly.
    let exact = format!("{}x", "😀".repeat(8_119));
    assert_eq!(exact.len() + "user_a".len() + 157, (64 * 1024 - 256) / 2);
    post(&env, "org_pe", &ch, &exact).await;
    post(&env, "org_pe", &ch, &exact).await;
    let mut c = env.client().await;
    let first = c
        .list_messages(env.member("user_b", "org_pe", list(&ch, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.messages.len(), 2);
    assert!(!first.next_page_token.is_empty(), "older messages follow");
    let second = c
        .list_messages(env.member("user_b", "org_pe", list(&ch, &first.next_page_token)))
        .await
        .unwrap()
        .into_inner();
    let bodies: Vec<_> = second.messages.into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, ["old"]);
}

#[tokio::test]
async fn pages_end_at_the_answers_bytes_and_bodies_are_capped_in_bytes() {
    let env = start_custom(false, |c| c.watch.calls.response_max_bytes = 64 * 1024).await;
    let ch = channel(&env, "org_pg", "big").await;
    // 8,000 four-byte characters: 32,000 bytes, the most a body may hold in bytes is 32 KiB.
    let large = "😀".repeat(8_000);
    for i in 0..9 {
        post(&env, "org_pg", &ch, &format!("{i}{large}")).await;
    }
    for i in 0..5 {
        post(&env, "org_pg", &ch, &format!("small {i}")).await;
    }
    let mut c = env.client().await;
    let mut token = String::new();
    let mut bodies = Vec::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_messages(env.member("user_b", "org_pg", list(&ch, &token)))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        let size = page.encoded_len();
        assert!(size <= 64 * 1024, "a page of {size} bytes");
        assert!(!page.messages.is_empty());
        bodies.extend(page.messages.into_iter().map(|m| m.body));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(bodies.len(), 14, "every message once");
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 14, "every message once");
    assert!(
        pages >= 5,
        "{pages} pages: two large messages fit in 64 KiB"
    );

    // Characters and bytes: 9,000 four-byte characters are under 10,000 characters but over
    // 32 KiB.
    let refused = c
        .post_message(env.member(
            "user_a",
            "org_pg",
            pb::PostMessageRequest {
                channel_id: ch.clone(),
                body: "😀".repeat(9_000),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("bytes"), "{refused:?}");
    // A user's request over 64 KiB is cut off before it is held whole.
    let huge = c
        .post_message(env.member(
            "user_a",
            "org_pg",
            pb::PostMessageRequest {
                channel_id: ch.clone(),
                body: "x".repeat(100_000),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::ResourceExhausted, "{huge:?}");
    assert!(huge.message().contains("65536 bytes"), "{huge:?}");
}

#[tokio::test]
async fn a_users_reads_per_minute_and_calls_in_flight_are_capped() {
    let env = start_custom(false, |c| {
        c.watch.calls.quotas.user_reads_per_minute = 8;
        c.watch.calls.quotas.user_calls_in_flight = 2;
    })
    .await;
    let ch = channel(&env, "org_q", "q").await;
    let body = "z".repeat(9_000);
    for i in 0..20 {
        post(&env, "org_q", &ch, &format!("{i} {body}")).await;
    }
    // Two pages of about 180 KB whose client reads nothing: both stay in flight.
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let req = env.member("user_b", "org_q", list(&ch, ""));
        stuck.push(unread_call(env.server.addr, "ListMessages", req).await);
    }
    let mut c = env.client().await;
    let get = |user: &str| {
        env.member(
            user,
            "org_q",
            pb::GetWorkspaceRequest {
                clerk_org_id: "org_q".into(),
            },
        )
    };
    let busy = c.get_workspace(get("user_b")).await.unwrap_err();
    assert_eq!(busy.code(), Code::ResourceExhausted, "{busy:?}");
    assert!(busy.message().contains("USER_CALLS_IN_FLIGHT"), "{busy:?}");
    c.get_workspace(get("user_c"))
        .await
        .expect("another user is not affected");
    // The client gives up on them: the user's calls are free again. Probed with user_b's
    // writes, which take a place in flight but are not reads (the count below stays exact).
    drop(stuck);
    eventually("user_b's calls free again", Duration::from_secs(5), || {
        let mut c = c.clone();
        let req = env.member(
            "user_b",
            "org_q",
            pb::PostMessageRequest {
                channel_id: ch.clone(),
                body: "probe".into(),
                ..Default::default()
            },
        );
        async move { c.post_message(req).await.is_ok() }
    })
    .await;
    // Reads per minute: user_b has spent three of eight (two pages, one refused call counts
    // too); five more pass, the next is refused with when to retry.
    for _ in 0..5 {
        c.get_workspace(get("user_b")).await.unwrap();
    }
    let limited = c.get_workspace(get("user_b")).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(limited.message().contains("too many reads"), "{limited:?}");
    assert!(limited.metadata().get("retry-after").is_some());
    // Writes are not reads, and internal callers are not limited.
    post(&env, "org_q", &ch, "still writing").await;
    for _ in 0..10 {
        c.get_workspace(env.service(pb::GetWorkspaceRequest {
            clerk_org_id: "org_q".into(),
        }))
        .await
        .unwrap();
    }
}

/// A deletion goes on after its caller gives up (its transaction must end), and keeps the
/// caller's turn until it does: a user cannot leave more deletions running than their turns by
/// cancelling them.
#[tokio::test]
async fn a_deletion_its_caller_gave_up_on_keeps_their_turn_until_it_ends() {
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    let env = start_custom(false, |c| c.watch.calls.quotas.user_calls_running = 1).await;
    let ch = channel(&env, "org_t", "t").await;
    // Hold the channel's row: its deletion waits for it inside its task.
    let mut locker = diesel_async::AsyncPgConnection::establish(env.db.url())
        .await
        .unwrap();
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM channels WHERE id = '{ch}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let mut c = env.client().await;
    let mut delete = env.admin(
        "user_a",
        "org_t",
        pb::DeleteChannelRequest {
            channel_id: ch.clone(),
        },
    );
    delete.set_timeout(Duration::from_millis(300));
    let gave_up = c.delete_channel(delete).await.unwrap_err();
    assert!(
        matches!(gave_up.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{gave_up:?}"
    );
    let mut reader = c.clone();
    let read = tokio::spawn({
        let req = env.admin(
            "user_a",
            "org_t",
            pb::ListChannelsRequest {
                clerk_org_id: "org_t".into(),
                ..Default::default()
            },
        );
        async move { reader.list_channels(req).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !read.is_finished(),
        "the user's next call ran while their abandoned deletion held the one turn"
    );
    locker.batch_execute("COMMIT").await.unwrap();
    read.await.unwrap().unwrap();
}

/// A read whose caller gave up while PostgreSQL was still running it keeps the caller's turn
/// until the statement ends: a user cannot leave more reads running, each holding a pooled
/// connection, than their turns by cancelling them.
#[tokio::test]
async fn a_read_its_caller_gave_up_on_keeps_their_turn_until_its_statement_ends() {
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    let env = start_custom(false, |c| c.watch.calls.quotas.user_calls_running = 1).await;
    let ch = channel(&env, "org_r", "r").await;
    post(&env, "org_r", &ch, "a message").await;
    // Hold the messages table: a page of messages waits for it in PostgreSQL.
    let mut locker = diesel_async::AsyncPgConnection::establish(env.db.url())
        .await
        .unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut c = env.client().await;
    let mut read = env.member("user_b", "org_r", list(&ch, ""));
    read.set_timeout(Duration::from_millis(300));
    let gave_up = c.list_messages(read).await.unwrap_err();
    assert!(
        matches!(gave_up.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{gave_up:?}"
    );
    let mut reader = c.clone();
    let next = tokio::spawn({
        let req = env.member(
            "user_b",
            "org_r",
            pb::ListChannelsRequest {
                clerk_org_id: "org_r".into(),
                ..Default::default()
            },
        );
        async move { reader.list_channels(req).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !next.is_finished(),
        "the user's next call ran while their abandoned read still ran in PostgreSQL"
    );
    locker.batch_execute("COMMIT").await.unwrap();
    next.await.unwrap().unwrap();
    // The connection the abandoned read held answers the next read once it is back.
    c.list_messages(env.member("user_b", "org_r", list(&ch, "")))
        .await
        .unwrap();
}
