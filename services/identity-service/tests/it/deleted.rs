//! A user deleted in Clerk (the tombstone row): every token of the user, issued before the
//! deletion or after it, is refused by GetCurrentUser, GetUser, BatchGetUsers and StoreUser
//! (PERMISSION_DENIED, as a ban), with the user cache on and off, here and on another replica
//! after the delete was applied on the first. Nobody is shown the tombstone as a user. A user
//! never synced (no row: a sign-up whose webhook has not arrived) keeps reading.

use crate::support::{self, Env, ts};
use crate::user_calls::{all, as_user, calls};
use service_harness::RunningServer;
use std::time::Duration;
use tokio::time::{Instant, sleep_until};
use tonic::transport::Channel;
use tonic::{Code, Request};
use vbase_proto::identity::v1 as pb;
use vbase_proto::identity::v1::CommandOutcome;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;

const T0: i64 = 1_700_000_000;
const DELETED: &str = "deleted in Clerk";
/// How soon after a command's answer another replica's cache has heard it (80 ms after the
/// commit, as `user_cache.rs` tests it).
const BOUND: Duration = Duration::from_millis(100);

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An identity-service with its user cache on or off.
async fn start(cache: bool) -> Env {
    support::start_with(|c| c.user_cache_bytes = if cache { 8 << 20 } else { 0 }).await
}

/// Another replica on `env`'s database, with its user cache on or off.
async fn second_replica(env: &Env, cache: bool) -> (RunningServer, IdentityServiceClient<Channel>) {
    let mut cfg = support::config(env.db.url(), &env.issuers);
    cfg.user_cache_bytes = if cache { 8 << 20 } else { 0 };
    let server = RunningServer::start(|l, s| identity_service::run(cfg, l, s)).await;
    let client = IdentityServiceClient::new(server.channel().await);
    (server, client)
}

async fn create(env: &Env, user: &str) {
    let cmd = pb::UpsertUserCommand {
        event_id: format!("created-{user}"),
        occurred_at: ts(T0),
        clerk_id: user.into(),
        name: format!("Name of {user}"),
        email: format!("{user}@example.org"),
        created_at: ts(T0),
        ..Default::default()
    };
    let mut c = env.client().await;
    let r = c.upsert_user(env.service(cmd)).await.unwrap().into_inner();
    assert_eq!(r.outcome(), CommandOutcome::Applied);
}

/// Deletes `user` through `c`, dated `at` (Unix seconds).
async fn delete(env: &Env, c: &mut IdentityServiceClient<Channel>, user: &str, at: i64) {
    let cmd = pb::DeleteUserCommand {
        event_id: format!("deleted-{user}"),
        occurred_at: ts(at),
        clerk_id: user.into(),
        ..Default::default()
    };
    let r = c.delete_user(env.service(cmd)).await.unwrap().into_inner();
    assert_eq!(r.outcome(), CommandOutcome::Applied);
}

/// What a read of `user` by `req`'s caller finds: GetUser's code, and BatchGetUsers' found and
/// missing ids (asked with `user_other`).
async fn read_of<F: Fn() -> Request<()>>(
    c: &mut IdentityServiceClient<Channel>,
    req: F,
    user: &str,
) -> (Code, Vec<String>, Vec<String>) {
    fn with<T>(req: Request<()>, msg: T) -> Request<T> {
        let (metadata, extensions, ()) = req.into_parts();
        Request::from_parts(metadata, extensions, msg)
    }
    let get = pb::GetUserRequest {
        clerk_id: user.into(),
    };
    let got = match c.get_user(with(req(), get)).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    let batch = pb::BatchGetUsersRequest {
        clerk_ids: vec![user.into(), "user_other".into()],
    };
    let b = c
        .batch_get_users(with(req(), batch))
        .await
        .unwrap()
        .into_inner();
    let found = b.users.into_iter().map(|u| u.clerk_id).collect();
    (got, found, b.missing_clerk_ids)
}

#[tokio::test]
async fn a_deleted_users_tokens_are_refused_and_nobody_is_shown_the_tombstone() {
    for cache in [true, false] {
        let env = start(cache).await;
        let mut c = env.client().await;
        let t = now();
        create(&env, "user_d").await;
        create(&env, "user_other").await;
        // Read first, so the caller's row is cached when the cache is on.
        for _ in 0..2 {
            assert_eq!(
                calls(&env, &mut c, "user_d", t - 60, DELETED).await,
                all(Ok(()))
            );
        }

        delete(&env, &mut c, "user_d", t - 30).await;
        let refused = all(Err(Code::PermissionDenied));
        // Issued before the deletion, and after it (Clerk issues none: fail closed).
        assert_eq!(
            calls(&env, &mut c, "user_d", t - 60, DELETED).await,
            refused,
            "cache {cache}"
        );
        assert_eq!(
            calls(&env, &mut c, "user_d", t, DELETED).await,
            refused,
            "cache {cache}"
        );
        // The refusal, answered from the cache's entry of the deletion when the cache is on (a
        // loaded machine may keep the cache from answering for a moment: tried a few times).
        let hits = r#"cache_lookups_total{cache="user",result="hit"}"#;
        let before = env.metric(hits).await.unwrap_or(0.0);
        for _ in 0..5 {
            let refusal = c
                .get_current_user(as_user(&env, "user_d", t, pb::GetCurrentUserRequest {}))
                .await
                .unwrap_err();
            assert_eq!(refusal.code(), Code::PermissionDenied);
            assert_eq!(
                refusal.message(),
                "this user was deleted in Clerk, which revoked all its sessions: its tokens are \
                 refused (sign out; signing up again makes a new user)"
            );
            if env.metric(hits).await.unwrap_or(0.0) > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let from_cache = env.metric(hits).await.unwrap_or(0.0) > before;
        assert_eq!(from_cache, cache, "refused from the cache");

        // Another user and an internal caller: not found, listed missing.
        let gone = (
            Code::NotFound,
            vec!["user_other".into()],
            vec!["user_d".into()],
        );
        let other = || as_user(&env, "user_other", t, ());
        assert_eq!(
            read_of(&mut c, other, "user_d").await,
            gone,
            "cache {cache}"
        );
        let service = || env.service(());
        assert_eq!(
            read_of(&mut c, service, "user_d").await,
            gone,
            "cache {cache}"
        );
        assert_eq!(
            calls(&env, &mut c, "user_other", t, DELETED).await,
            all(Ok(()))
        );

        // A delete that arrives before any create leaves a tombstone alone: refused as well.
        delete(&env, &mut c, "user_never_created", t - 30).await;
        let answers = calls(&env, &mut c, "user_never_created", t, DELETED).await;
        assert_eq!(answers, refused, "cache {cache}");
    }
}

#[tokio::test]
async fn a_delete_on_one_replica_refuses_the_token_on_another() {
    for cache in [true, false] {
        let env = start(cache).await;
        let (_b, mut b) = second_replica(&env, cache).await;
        let mut a = env.client().await;
        let t = now();
        create(&env, "user_d").await;
        create(&env, "user_other").await;
        for _ in 0..3 {
            assert_eq!(
                calls(&env, &mut b, "user_d", t - 60, DELETED).await,
                all(Ok(()))
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }

        delete(&env, &mut a, "user_d", t - 30).await;
        let answered = Instant::now();
        sleep_until(answered + BOUND).await;
        let refused = all(Err(Code::PermissionDenied));
        assert_eq!(
            calls(&env, &mut b, "user_d", t - 60, DELETED).await,
            refused,
            "cache {cache}"
        );
        let service = || env.service(());
        let gone = (
            Code::NotFound,
            vec!["user_other".into()],
            vec!["user_d".into()],
        );
        assert_eq!(
            read_of(&mut b, service, "user_d").await,
            gone,
            "cache {cache}"
        );
    }
}

#[tokio::test]
async fn a_user_never_synced_reads_others_and_is_not_found_as_itself() {
    for cache in [true, false] {
        let env = start(cache).await;
        let mut c = env.client().await;
        create(&env, "user_other").await;
        let new = || env.user("user_new", ());
        // Twice: the second answered from the cache when it is on.
        for _ in 0..2 {
            let current = c
                .get_current_user(env.user("user_new", pb::GetCurrentUserRequest {}))
                .await
                .unwrap_err();
            assert_eq!(current.code(), Code::NotFound, "cache {cache}: {current:?}");
            assert!(current.message().contains("not synced yet"), "{current:?}");
            assert_eq!(read_of(&mut c, new, "user_other").await.0, Code::Ok);
            let missing = (
                Code::NotFound,
                vec!["user_other".into()],
                vec!["user_new".into()],
            );
            assert_eq!(read_of(&mut c, new, "user_new").await, missing);
        }
        // StoreUser creates it, and it reads itself back at once.
        let stored = c.store_user(env.user("user_new", pb::StoreUserRequest {}));
        assert!(stored.await.unwrap().into_inner().created);
        let current = c.get_current_user(env.user("user_new", pb::GetCurrentUserRequest {}));
        assert_eq!(
            current.await.unwrap().into_inner().user.unwrap().clerk_id,
            "user_new"
        );
    }
}
