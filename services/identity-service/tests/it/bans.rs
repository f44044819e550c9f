//! A user banned in Clerk (`tokens_revoked_at` on the gateway's upsert): every token of the
//! user issued before the ban, or up to 1 s after it, is refused by the user's reads and by
//! StoreUser, also when the user's row is cached, here or on another replica; a token issued
//! after it passes. The latest revocation is kept, whatever order the states arrive in.

use crate::support::{self, Env, start, ts};
use crate::user_calls::{all, as_user, calls};
use std::time::Duration;
use tonic::Code;
use vbase_proto::identity::v1 as pb;
use vbase_proto::identity::v1::CommandOutcome;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;

const T0: i64 = 1_700_000_000;
const BANNED: &str = "sessions were revoked in Clerk (banned or deprovisioned)";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `user`'s state at `T0 + at`, revoking the tokens issued before `revoked_at` (Unix seconds).
fn state(
    event: &str,
    at: i64,
    user: &str,
    name: &str,
    revoked_at: Option<i64>,
) -> pb::UpsertUserCommand {
    pb::UpsertUserCommand {
        event_id: event.into(),
        occurred_at: ts(T0 + at),
        clerk_id: user.into(),
        name: name.into(),
        email: format!("{user}@example.org"),
        created_at: ts(T0),
        tokens_revoked_at: revoked_at.and_then(ts),
        ..Default::default()
    }
}

async fn apply(env: &Env, cmd: pb::UpsertUserCommand) -> CommandOutcome {
    let mut c = env.client().await;
    c.upsert_user(env.service(cmd))
        .await
        .unwrap()
        .into_inner()
        .outcome()
}

/// The stored name, as an internal caller reads it.
async fn name(env: &Env, user: &str) -> String {
    let mut c = env.client().await;
    let get = pb::GetUserRequest {
        clerk_id: user.into(),
    };
    c.get_user(env.service(get))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .name
}

#[tokio::test]
async fn a_ban_refuses_tokens_issued_before_it_and_passes_later_ones() {
    let env = start().await;
    let mut c = env.client().await;
    let now0 = now();
    let (old, fresh) = (now0 - 60, now0);
    assert_eq!(
        apply(&env, state("e1", 1, "user_b", "Before", None)).await,
        CommandOutcome::Applied
    );
    apply(&env, state("e_other", 1, "user_other", "Other", None)).await;
    // Read first, so the caller's row is cached (with a token a second older, so that the
    // old token's StoreUser would write).
    assert_eq!(
        calls(&env, &mut c, "user_b", old - 1, BANNED).await,
        all(Ok(()))
    );
    apply(&env, state("e1b", 2, "user_b", "Banned", None)).await;

    // Banned 1 s before the old token's `iat`: within the margin, so it is refused; the rename
    // a refused StoreUser would write ("Token Name") is not written.
    let ban = state("ban", 3, "user_b", "Banned", Some(old - 1));
    assert_eq!(apply(&env, ban.clone()).await, CommandOutcome::Applied);
    assert_eq!(
        calls(&env, &mut c, "user_b", old, BANNED).await,
        all(Err(Code::PermissionDenied))
    );
    assert_eq!(name(&env, "user_b").await, "Banned");
    // A token issued after the revocation (after an unban) passes; so does everyone else.
    assert_eq!(
        calls(&env, &mut c, "user_b", fresh, BANNED).await,
        all(Ok(()))
    );
    assert_eq!(
        calls(&env, &mut c, "user_other", old, BANNED).await,
        all(Ok(()))
    );

    // The delivery again, even with a later time, changes nothing.
    let again = pb::UpsertUserCommand {
        tokens_revoked_at: ts(fresh),
        ..ban
    };
    assert_eq!(apply(&env, again).await, CommandOutcome::Duplicate);
    assert_eq!(
        calls(&env, &mut c, "user_b", fresh, BANNED).await,
        all(Ok(()))
    );
}

#[tokio::test]
async fn the_latest_revocation_is_kept_whatever_order_the_states_arrive_in() {
    let env = start().await;
    let mut c = env.client().await;
    let now0 = now();
    let old = now0 - 60;
    apply(&env, state("e_other", 1, "user_other", "Other", None)).await;
    assert_eq!(
        apply(&env, state("new", 2000, "user_b", "Newer", None)).await,
        CommandOutcome::Applied
    );
    // The ban arrives after a newer state: the state stays, the revocation is recorded.
    let ban = state("ban", 1000, "user_b", "Older", Some(now0 - 30));
    assert_eq!(apply(&env, ban).await, CommandOutcome::Applied);
    assert_eq!(name(&env, "user_b").await, "Newer");
    assert_eq!(
        calls(&env, &mut c, "user_b", old, BANNED).await,
        all(Err(Code::PermissionDenied))
    );
    // A newer state without a ban (an unban), or with an earlier time (which would let the old
    // token pass), keeps the revocation.
    let unban = state("unban", 3000, "user_b", "Unbanned", None);
    assert_eq!(apply(&env, unban).await, CommandOutcome::Applied);
    let earlier = state("earlier", 4000, "user_b", "Later", Some(now0 - 100));
    assert_eq!(apply(&env, earlier).await, CommandOutcome::Applied);
    assert_eq!(name(&env, "user_b").await, "Later");
    assert_eq!(
        calls(&env, &mut c, "user_b", old, BANNED).await,
        all(Err(Code::PermissionDenied))
    );
    // Nothing new, state or revocation: stale.
    let stale = state("stale", 10, "user_b", "Stale", Some(now0 - 100));
    assert_eq!(apply(&env, stale).await, CommandOutcome::Stale);
    assert_eq!(
        calls(&env, &mut c, "user_b", now0, BANNED).await,
        all(Ok(()))
    );

    // In one batch, the revocation of an older state than the newest is kept too.
    let batch = pb::UpsertUsersCommand {
        commands: vec![
            state("b_new", 2000, "user_c", "C new", None),
            state("b_ban", 1000, "user_c", "C old", Some(now0 - 30)),
        ],
    };
    let r = c
        .upsert_users(env.service(batch))
        .await
        .unwrap()
        .into_inner();
    assert!(r.results.iter().all(|r| r.code == 0), "{r:?}");
    assert_eq!(name(&env, "user_c").await, "C new");
    assert_eq!(
        calls(&env, &mut c, "user_c", old, BANNED).await,
        all(Err(Code::PermissionDenied))
    );
}

/// A caller cached on another replica is refused within the cache's bound of the ban.
#[tokio::test]
async fn a_ban_reaches_another_replicas_cache() {
    let env = start().await;
    let cfg = support::config(env.db.url(), &env.issuers);
    let other =
        service_harness::RunningServer::start(|l, s| identity_service::run(cfg, l, s)).await;
    let mut b = IdentityServiceClient::new(other.channel().await);
    let old = now() - 60;
    apply(&env, state("e1", 1, "user_b", "B", None)).await;
    apply(&env, state("e_other", 1, "user_other", "Other", None)).await;
    for _ in 0..3 {
        let r = b.get_current_user(as_user(&env, "user_b", old, pb::GetCurrentUserRequest {}));
        r.await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    apply(&env, state("ban", 2, "user_b", "B", Some(old))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = b
        .get_current_user(as_user(&env, "user_b", old, pb::GetCurrentUserRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let get = pb::GetUserRequest {
        clerk_id: "user_other".into(),
    };
    let refused = b
        .get_user(as_user(&env, "user_b", old, get))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}
