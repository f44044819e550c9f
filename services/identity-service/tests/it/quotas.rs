//! What one user's calls may take of a replica: reads per minute, calls in flight (an answer
//! counts until its client has taken it) and the size of a request; and `BatchGetUsers`
//! answers each id once, however often it is asked for.

use crate::support::{self, Env, ts};
use prost::Message;
use service_harness::{eventually, unread_call};
use std::time::Duration;
use tonic::Code;
use vbase_proto::identity::v1 as pb;

/// `n` users whose records are about 2 KB each (a long image URL), so an answer with a few
/// dozen is larger than the 16 KiB an unread client's window takes.
async fn users(env: &Env, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("user_q{i}")).collect();
    let mut c = env.client().await;
    for chunk in ids.chunks(100) {
        let commands = chunk
            .iter()
            .map(|id| pb::UpsertUserCommand {
                event_id: format!("evt-{id}"),
                occurred_at: ts(1_700_000_000),
                clerk_id: id.clone(),
                name: format!("Name of {id}"),
                email: format!("{id}@example.com"),
                image_url: format!("https://img.clerk.com/{}", "i".repeat(2_000)),
                created_at: ts(1_700_000_000),
                ..Default::default()
            })
            .collect();
        let done = c
            .upsert_users(env.service(pb::UpsertUsersCommand { commands }))
            .await
            .unwrap()
            .into_inner();
        assert!(done.results.iter().all(|r| r.code == 0), "{done:?}");
    }
    ids
}

fn batch(ids: &[String]) -> pb::BatchGetUsersRequest {
    pb::BatchGetUsersRequest {
        clerk_ids: ids.to_vec(),
    }
}

#[tokio::test]
async fn a_users_reads_per_minute_and_calls_in_flight_are_capped() {
    let env = support::start_with(|c| {
        c.quotas.user_reads_per_minute = 8;
        c.quotas.user_calls_in_flight = 2;
    })
    .await;
    let ids = users(&env, 40).await;
    // Two answers of about 80 KB whose client reads nothing: both stay in flight.
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let req = env.user("user_b", batch(&ids));
        let path = "/vbase.identity.v1.IdentityService/BatchGetUsers";
        stuck.push(unread_call(env.server.addr, path, req).await);
    }
    let mut c = env.client().await;
    let get = |user: &str| {
        env.user(
            user,
            pb::GetUserRequest {
                clerk_id: ids[0].clone(),
            },
        )
    };
    let busy = c.get_user(get("user_b")).await.unwrap_err();
    assert_eq!(busy.code(), Code::ResourceExhausted, "{busy:?}");
    assert!(busy.message().contains("USER_CALLS_IN_FLIGHT"), "{busy:?}");
    c.get_user(get("user_c"))
        .await
        .expect("another user is not affected");
    // The client gives up on them: the user's calls are free again. Probed with user_b's
    // StoreUser, which takes a place in flight but is not a read (the count below stays exact).
    drop(stuck);
    eventually("user_b's calls free again", Duration::from_secs(5), || {
        let mut c = c.clone();
        let req = env.user("user_b", pb::StoreUserRequest {});
        async move { c.store_user(req).await.is_ok() }
    })
    .await;
    // Reads per minute: user_b has spent three of eight (two batches, one refused call counts
    // too); five more pass, the next is refused with when to retry.
    for _ in 0..5 {
        c.get_user(get("user_b")).await.unwrap();
    }
    let limited = c.get_user(get("user_b")).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(limited.message().contains("too many reads"), "{limited:?}");
    assert!(limited.metadata().get("retry-after").is_some());
    let current = c
        .get_current_user(env.user("user_b", pb::GetCurrentUserRequest {}))
        .await
        .unwrap_err();
    assert_eq!(current.code(), Code::ResourceExhausted, "{current:?}");
    // Writes are not reads, and internal callers are not limited.
    c.store_user(env.user("user_b", pb::StoreUserRequest {}))
        .await
        .unwrap();
    for _ in 0..10 {
        c.get_user(env.service(pb::GetUserRequest {
            clerk_id: ids[0].clone(),
        }))
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_users_request_over_64_kib_is_cut_off_before_it_is_held_whole() {
    let env = support::start().await;
    let mut c = env.client().await;
    let huge = || pb::GetUserRequest {
        clerk_id: "x".repeat(100_000),
    };
    let refused = c.get_user(env.user("user_a", huge())).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("65536 bytes"), "{refused:?}");
    // The largest valid BatchGetUsers fits: 500 ids of 64 characters.
    let longest: Vec<String> = (0..500)
        .map(|i| format!("user_{i:0>59}"))
        .inspect(|id| assert_eq!(id.len(), 64))
        .collect();
    assert!(batch(&longest).encoded_len() < 64 * 1024);
    let answer = c
        .batch_get_users(env.user("user_a", batch(&longest)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.missing_clerk_ids.len(), 500);
    // An internal caller is not cut off here: its request reaches the handler.
    let checked = c.get_user(env.service(huge())).await.unwrap_err();
    assert_eq!(checked.code(), Code::InvalidArgument, "{checked:?}");
}

#[tokio::test]
async fn batch_get_users_answers_each_id_once_in_the_order_first_asked() {
    let env = support::start().await;
    let ids = users(&env, 3).await;
    let (a, b) = (&ids[0], &ids[1]);
    let mut c = env.client().await;
    let asked: Vec<String> = [b, &"user_zz".to_owned(), a]
        .into_iter()
        .cycle()
        .take(500)
        .cloned()
        .collect();
    for req in [env.user(a, batch(&asked)), env.service(batch(&asked))] {
        let answer = c.batch_get_users(req).await.unwrap().into_inner();
        let got: Vec<&str> = answer.users.iter().map(|u| u.clerk_id.as_str()).collect();
        assert_eq!(got, [b.as_str(), a.as_str()]);
        assert_eq!(answer.missing_clerk_ids, ["user_zz"]);
    }
    // 500 copies of one id: one record, not 500 (about 1 MB here).
    let copies = vec![a.clone(); 500];
    let answer = c
        .batch_get_users(env.user(b, batch(&copies)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.users.len(), 1);
    assert!(answer.encoded_len() < 4 * 1024, "{}", answer.encoded_len());
    // The cap still counts the ids asked for, repeats included.
    let refused = c
        .batch_get_users(env.user(b, batch(&vec![a.clone(); 501])))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}

/// Of a user's calls in flight, only `USER_CALLS_RUNNING` run their handler (and may hold a
/// database connection) at once: the others wait in line, and other users do not.
#[tokio::test]
async fn a_users_calls_beyond_their_running_turns_wait_in_line() {
    let env = support::start_with(|c| {
        c.quotas.user_calls_running = 1;
    })
    .await;
    let ids = users(&env, 1).await;
    let mut c = env.client().await;
    c.store_user(env.user("user_b", pb::StoreUserRequest {}))
        .await
        .unwrap();
    // Hold user_b's row: their next StoreUser waits for it inside its handler.
    let (locker, conn) = tokio_postgres::connect(env.db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; SELECT 1 FROM users WHERE clerk_id = 'user_b' FOR UPDATE")
        .await
        .unwrap();
    let mut blocked = c.clone();
    let store = tokio::spawn({
        let req = env.user("user_b", pb::StoreUserRequest {});
        async move { blocked.store_user(req).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let get = |user: &str| {
        env.user(
            user,
            pb::GetUserRequest {
                clerk_id: ids[0].clone(),
            },
        )
    };
    let mut waiting = c.clone();
    let read = tokio::spawn({
        let req = get("user_b");
        async move { waiting.get_user(req).await }
    });
    c.get_user(get("user_c"))
        .await
        .expect("another user is not affected");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !read.is_finished(),
        "user_b's second call ran while their one turn was taken"
    );
    locker.batch_execute("COMMIT").await.unwrap();
    store.await.unwrap().unwrap();
    read.await.unwrap().unwrap();
}
