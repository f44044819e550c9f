//! identity-service against a real Postgres, a real server and real tokens.

use crate::support;

use support::{Env, bearer, start, ts};
use tonic::Code;
use vbase_proto::identity::v1 as pb;
use vbase_proto::identity::v1::CommandOutcome;

/// Test times are offsets from this realistic base (Clerk timestamps are recent).
const T0: i64 = 1_700_000_000;

fn upsert(event: &str, at: i64, id: &str, name: &str, email: &str) -> pb::UpsertUserCommand {
    pb::UpsertUserCommand {
        event_id: event.into(),
        occurred_at: ts(T0 + at),
        clerk_id: id.into(),
        name: name.into(),
        email: email.into(),
        image_url: format!("https://img.clerk.com/{name}"),
        created_at: ts(1_700_000_000),
        event_time: None,
        ..Default::default()
    }
}

fn delete(event: &str, at: i64, id: &str) -> pb::DeleteUserCommand {
    pb::DeleteUserCommand {
        event_id: event.into(),
        occurred_at: ts(T0 + at),
        clerk_id: id.into(),
        ..Default::default()
    }
}

async fn stored(env: &Env, id: &str) -> Option<pb::User> {
    let mut c = env.client().await;
    match c
        .get_user(env.service(pb::GetUserRequest {
            clerk_id: id.into(),
        }))
        .await
    {
        Ok(r) => r.into_inner().user,
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => panic!("GetUser failed: {s:?}"),
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

#[tokio::test]
async fn upsert_creates_then_updates_and_reads_back() {
    let env = start().await;
    assert_eq!(
        apply(
            &env,
            upsert("msg_1", 1000, "user_a", "Ada", "ada@example.com")
        )
        .await,
        CommandOutcome::Applied
    );
    let u = stored(&env, "user_a").await.unwrap();
    assert_eq!(
        (u.name.as_str(), u.email.as_str()),
        ("Ada", "ada@example.com")
    );
    assert_eq!(u.image_url, "https://img.clerk.com/Ada");
    assert_eq!(u.updated_at.unwrap().seconds, T0 + 1000);
    assert_eq!(u.created_at.unwrap().seconds, 1_700_000_000);
    assert_eq!(
        apply(&env, upsert("msg_2", 2000, "user_a", "Ada L", "ada@l.org")).await,
        CommandOutcome::Applied
    );
    assert_eq!(stored(&env, "user_a").await.unwrap().name, "Ada L");
}

#[tokio::test]
async fn the_same_event_id_has_exactly_one_effect() {
    let env = start().await;
    assert_eq!(
        apply(&env, upsert("msg_dup", 1000, "user_a", "First", "a@b.co")).await,
        CommandOutcome::Applied
    );
    // A redelivery (even with other content, which Svix never sends) changes nothing.
    assert_eq!(
        apply(&env, upsert("msg_dup", 5000, "user_a", "Second", "a@b.co")).await,
        CommandOutcome::Duplicate
    );
    assert_eq!(stored(&env, "user_a").await.unwrap().name, "First");
    let mut c = env.client().await;
    let d = c
        .delete_user(env.service(delete("msg_del", 6000, "user_a")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.outcome(), CommandOutcome::Applied);
    let d = c
        .delete_user(env.service(delete("msg_del", 6000, "user_a")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.outcome(), CommandOutcome::Duplicate);
}

#[tokio::test]
async fn an_older_upsert_changes_nothing_and_succeeds() {
    let env = start().await;
    apply(&env, upsert("msg_new", 2000, "user_a", "Newer", "n@b.co")).await;
    assert_eq!(
        apply(&env, upsert("msg_old", 1000, "user_a", "Older", "o@b.co")).await,
        CommandOutcome::Stale
    );
    let u = stored(&env, "user_a").await.unwrap();
    assert_eq!((u.name.as_str(), u.email.as_str()), ("Newer", "n@b.co"));
}

#[tokio::test]
async fn a_delete_leaves_a_tombstone_nothing_resurrects() {
    let env = start().await;
    apply(&env, upsert("e1", 1000, "user_a", "Ada", "a@b.co")).await;
    let mut c = env.client().await;
    c.delete_user(env.service(delete("e2", 3000, "user_a")))
        .await
        .unwrap();
    assert!(stored(&env, "user_a").await.is_none());
    // Late older update, and a later one (ids are never reused): both stale.
    assert_eq!(
        apply(&env, upsert("e3", 2000, "user_a", "Late", "a@b.co")).await,
        CommandOutcome::Stale
    );
    assert_eq!(
        apply(&env, upsert("e4", 9000, "user_a", "Later", "a@b.co")).await,
        CommandOutcome::Stale
    );
    assert!(stored(&env, "user_a").await.is_none());
    // A still-valid token of the deleted user does not recreate it: refused, as a ban is.
    let err = c
        .store_user(env.user("user_a", pb::StoreUserRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("deleted in Clerk"), "{err:?}");
    assert!(stored(&env, "user_a").await.is_none());
    // A delete that arrives before any create also leaves a tombstone.
    c.delete_user(env.service(delete("e5", 100, "user_b")))
        .await
        .unwrap();
    assert_eq!(
        apply(&env, upsert("e6", 50, "user_b", "B", "b@b.co")).await,
        CommandOutcome::Stale
    );
    assert!(stored(&env, "user_b").await.is_none());
}

#[tokio::test]
async fn concurrent_upserts_end_in_the_newest_state_without_errors() {
    let env = start().await;
    let mut handles = Vec::new();
    // 40 writers race for the same user with shuffled timestamps.
    let mut times: Vec<i64> = (1..=40).map(|i| i * 10).collect();
    use rand::seq::SliceRandom;
    times.shuffle(&mut rand::rng());
    for t in times {
        let mut c = env.client().await;
        let req = env.service(upsert(
            &format!("evt_{t}"),
            t,
            "user_race",
            &format!("n{t}"),
            "r@b.co",
        ));
        handles.push(tokio::spawn(async move { c.upsert_user(req).await }));
    }
    for h in handles {
        let r = h.await.unwrap();
        assert!(r.is_ok(), "an upsert failed: {r:?}");
    }
    let u = stored(&env, "user_race").await.unwrap();
    assert_eq!(u.name, "n400");
    assert_eq!(u.updated_at.unwrap().seconds, T0 + 400);
}

#[tokio::test]
async fn invalid_input_is_refused_and_writes_nothing() {
    let env = start().await;
    let mut c = env.client().await;
    let long = "x".repeat(300);
    let bad: Vec<(&str, pb::UpsertUserCommand)> = vec![
        ("empty id", upsert("v1", 1000, "", "N", "a@b.co")),
        (
            "no user_ prefix",
            upsert("v1", 1000, "org_abc", "N", "a@b.co"),
        ),
        (
            "absurd id",
            upsert("v1", 1000, &format!("user_{long}"), "N", "a@b.co"),
        ),
        ("absurd name", upsert("v1", 1000, "user_v", &long, "a@b.co")),
        (
            "bad email",
            upsert("v1", 1000, "user_v", "N", "not-an-email"),
        ),
        ("no event id", upsert("", 1000, "user_v", "N", "a@b.co")),
        (
            "no occurred_at",
            pb::UpsertUserCommand {
                occurred_at: None,
                ..upsert("v1", 1, "user_v", "N", "a@b.co")
            },
        ),
        (
            "occurred_at in 1970",
            pb::UpsertUserCommand {
                occurred_at: ts(1000),
                ..upsert("v1", 1, "user_v", "N", "a@b.co")
            },
        ),
        (
            "bad image url",
            pb::UpsertUserCommand {
                image_url: "javascript:alert(1)".into(),
                ..upsert("v1", 1000, "user_v", "N", "a@b.co")
            },
        ),
    ];
    for (what, cmd) in bad {
        let err = c.upsert_user(env.service(cmd)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(!err.message().is_empty());
    }
    let err = c
        .delete_user(env.service(delete("v1", 1000, "nope")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Nothing was written: the user is absent and event id v1 was never recorded.
    assert!(stored(&env, "user_v").await.is_none());
    assert_eq!(
        apply(&env, upsert("v1", 1000, "user_v", "N", "a@b.co")).await,
        CommandOutcome::Applied
    );
}

/// A sync command's time more than a day ahead of the service's clock, or malformed, is
/// refused naming the field, and writes nothing: stored, a far-future `occurred_at` would make
/// every later state of the user stale, a far-future `tokens_revoked_at` would refuse the user's
/// tokens until then, and a malformed one must not read as "not banned" or "time unknown".
#[tokio::test]
async fn sync_times_in_the_future_or_malformed_are_refused_and_write_nothing() {
    let env = start().await;
    let mut c = env.client().await;
    let now = token_auth::signing::now_secs();
    let decade = ts(now + 10 * 365 * 86_400);
    let nanos = |nanos| {
        Some(prost_types::Timestamp {
            seconds: now - 60,
            nanos,
        })
    };
    let ok = || upsert("t1", now - 60 - T0, "user_t", "N", "a@b.co");
    let bad: Vec<(&str, pb::UpsertUserCommand)> = vec![
        (
            "occurred_at is in the future",
            pb::UpsertUserCommand {
                occurred_at: decade,
                ..ok()
            },
        ),
        (
            "tokens_revoked_at is in the future",
            pb::UpsertUserCommand {
                tokens_revoked_at: decade,
                ..ok()
            },
        ),
        (
            "event_time is in the future",
            pb::UpsertUserCommand {
                event_time: decade,
                ..ok()
            },
        ),
        (
            "created_at is in the future",
            pb::UpsertUserCommand {
                created_at: decade,
                ..ok()
            },
        ),
        (
            "tokens_revoked_at.nanos must be",
            pb::UpsertUserCommand {
                tokens_revoked_at: nanos(2_000_000_000),
                ..ok()
            },
        ),
        (
            "event_time is out of range",
            pb::UpsertUserCommand {
                event_time: ts(-1),
                ..ok()
            },
        ),
        (
            "created_at.nanos must be",
            pb::UpsertUserCommand {
                created_at: nanos(-1),
                ..ok()
            },
        ),
    ];
    for (says, cmd) in bad {
        let err = c.upsert_user(env.service(cmd)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{says}: {err:?}");
        assert!(err.message().starts_with(says), "{says}: {err:?}");
    }
    for (says, occurred_at) in [
        ("occurred_at.nanos must be", nanos(2_000_000_000)),
        ("occurred_at is in the future", decade),
    ] {
        let delete = pb::DeleteUserCommand {
            occurred_at,
            ..delete("t2", 0, "user_d")
        };
        let err = c.delete_user(env.service(delete)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{says}: {err:?}");
        assert!(err.message().starts_with(says), "{says}: {err:?}");
    }
    // Nothing was written, and neither event id was recorded (a delete applied would have
    // recorded its own: the same id again would be a duplicate).
    assert!(stored(&env, "user_t").await.is_none());
    assert_eq!(apply(&env, ok()).await, CommandOutcome::Applied);
    let deleted = c
        .delete_user(env.service(delete("t2", 0, "user_d")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.outcome(), CommandOutcome::Applied);
    // When a user was created has no floor: Clerk lets an import set it, the epoch included.
    let imported = pb::UpsertUserCommand {
        created_at: Some(prost_types::Timestamp::default()),
        ..upsert("t3", now - 60 - T0, "user_old", "Old", "old@b.co")
    };
    assert_eq!(apply(&env, imported).await, CommandOutcome::Applied);
}

#[tokio::test]
async fn store_user_creates_from_claims_and_current_user_reads_it() {
    let env = start().await;
    let mut c = env.client().await;
    let err = c
        .get_current_user(env.user("user_s", pb::GetCurrentUserRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let r = c
        .store_user(env.user("user_s", pb::StoreUserRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(r.created);
    assert_eq!(r.user.as_ref().unwrap().email, "user_s@example.com");
    let again = c
        .store_user(env.user("user_s", pb::StoreUserRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    let me = c
        .get_current_user(env.user("user_s", pb::GetCurrentUserRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.user.unwrap().name, "Token Name");
}

#[tokio::test]
async fn store_user_never_rolls_back_newer_webhook_data() {
    let env = start().await;
    let future = token_auth::signing::now_secs() + 3600 - T0;
    apply(
        &env,
        upsert("w1", future, "user_w", "Webhook Name", "hook@b.co"),
    )
    .await;
    let mut c = env.client().await;
    let r = c
        .store_user(env.user("user_w", pb::StoreUserRequest {}))
        .await
        .unwrap()
        .into_inner();
    let u = r.user.unwrap();
    assert_eq!(
        (u.name.as_str(), u.email.as_str()),
        ("Webhook Name", "hook@b.co")
    );
    assert_eq!(stored(&env, "user_w").await.unwrap().name, "Webhook Name");
}

#[tokio::test]
async fn store_user_refreshes_name_and_email_from_a_newer_token() {
    let env = start().await;
    apply(&env, upsert("w1", 1000, "user_w", "Old Name", "old@b.co")).await;
    let mut c = env.client().await;
    let r = c
        .store_user(env.user("user_w", pb::StoreUserRequest {}))
        .await
        .unwrap()
        .into_inner();
    let u = r.user.unwrap();
    assert_eq!(
        (u.name.as_str(), u.email.as_str()),
        ("Token Name", "user_w@example.com")
    );
    // The image from the webhook is kept.
    assert_eq!(u.image_url, "https://img.clerk.com/Old Name");
}

/// The name of a user's token is made displayable as the gateway makes Clerk's names (the same
/// function): bidirectional controls and invisible characters go, so others never see
/// "report\u{202E}fdp.exe" as "reportexe.pdf". A name with nothing visible left is no name: a
/// new user is "Anonymous", and a user held keeps the clean name held (the token's other
/// claims still apply).
#[tokio::test]
async fn store_user_shows_others_the_tokens_name_made_displayable() {
    let env = start().await;
    let mut c = env.client().await;
    let store = |id: &str, name: &str, email: &str| {
        let claims = env.issuers.clerk.claims(id, name, email, None);
        bearer(pb::StoreUserRequest {}, &env.issuers.clerk.sign(&claims))
    };
    // What another user sees of `id`.
    let name_seen = async |id: &str| {
        let req = pb::GetUserRequest {
            clerk_id: id.into(),
        };
        let mut c = env.client().await;
        let found = c.get_user(env.user("user_other", req)).await.unwrap();
        found.into_inner().user.unwrap().name
    };

    c.store_user(store("user_rtl", "report\u{202E}fdp.exe\u{200B}", "r@b.co"))
        .await
        .unwrap();
    assert_eq!(name_seen("user_rtl").await, "reportfdp.exe");

    c.store_user(store("user_blank", "\u{200B}\u{3164}\u{202E}", "b@b.co"))
        .await
        .unwrap();
    assert_eq!(name_seen("user_blank").await, "Anonymous");

    // Held with a clean name from Clerk, older than the token: the token's new email is
    // taken, its invisible name is not.
    apply(
        &env,
        upsert("w1", 1000, "user_held", "Ada Lovelace", "old@b.co"),
    )
    .await;
    let own = c
        .store_user(store("user_held", "\u{3164}", "new@b.co"))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(
        (own.name.as_str(), own.email.as_str()),
        ("Ada Lovelace", "new@b.co")
    );
    assert_eq!(name_seen("user_held").await, "Ada Lovelace");
}

/// A token without a name makes a user named "Anonymous", never named by their email: the name
/// is what other users see.
#[tokio::test]
async fn store_user_without_a_name_does_not_show_the_email_to_others() {
    let env = start().await;
    let mut claims = env
        .issuers
        .clerk
        .claims("user_n", "", "nameless@b.co", None);
    claims["name"] = serde_json::Value::Null;
    let token = env.issuers.clerk.sign(&claims);
    let mut req = tonic::Request::new(pb::StoreUserRequest {});
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut c = env.client().await;
    let own = c.store_user(req).await.unwrap().into_inner().user.unwrap();
    assert_eq!(
        (own.name.as_str(), own.email.as_str()),
        ("Anonymous", "nameless@b.co")
    );
    let seen = c
        .get_user(env.user(
            "user_a",
            pb::GetUserRequest {
                clerk_id: "user_n".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!((seen.name.as_str(), seen.email.as_str()), ("Anonymous", ""));
}

#[tokio::test]
async fn webhook_after_store_user_brings_the_authoritative_data() {
    let env = start().await;
    let mut c = env.client().await;
    c.store_user(env.user("user_x", pb::StoreUserRequest {}))
        .await
        .unwrap();
    // user.created carries Clerk's updated_at from before the token was issued.
    let created = token_auth::signing::now_secs() - 30 - T0;
    assert_eq!(
        apply(
            &env,
            upsert("c1", created, "user_x", "Real Name", "real@b.co")
        )
        .await,
        CommandOutcome::Applied
    );
    let u = stored(&env, "user_x").await.unwrap();
    assert_eq!(
        (u.name.as_str(), u.email.as_str()),
        ("Real Name", "real@b.co")
    );
    assert_eq!(u.image_url, "https://img.clerk.com/Real Name");
}

#[tokio::test]
async fn users_see_only_the_public_profile_of_others() {
    let env = start().await;
    apply(&env, upsert("a", 1000, "user_a", "Ada", "ada@b.co")).await;
    apply(&env, upsert("b", 1000, "user_b", "Bob", "bob@b.co")).await;
    let mut c = env.client().await;
    let other = c
        .get_user(env.user(
            "user_a",
            pb::GetUserRequest {
                clerk_id: "user_b".into(),
            },
        ))
        .await
        .unwrap();
    let other = other.into_inner().user.unwrap();
    assert_eq!((other.name.as_str(), other.email.as_str()), ("Bob", ""));
    let own = c
        .get_user(env.user(
            "user_a",
            pb::GetUserRequest {
                clerk_id: "user_a".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(own.into_inner().user.unwrap().email, "ada@b.co");
    let svc = c
        .get_user(env.service(pb::GetUserRequest {
            clerk_id: "user_b".into(),
        }))
        .await
        .unwrap();
    assert_eq!(svc.into_inner().user.unwrap().email, "bob@b.co");

    let batch = c
        .batch_get_users(env.user(
            "user_a",
            pb::BatchGetUsersRequest {
                clerk_ids: vec![
                    "user_b".into(),
                    "user_zz".into(),
                    "user_a".into(),
                    "user_b".into(),
                ],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(&str, &str)> = batch
        .users
        .iter()
        .map(|u| (u.clerk_id.as_str(), u.email.as_str()))
        .collect();
    assert_eq!(got, vec![("user_b", ""), ("user_a", "ada@b.co")]);
    assert_eq!(batch.missing_clerk_ids, vec!["user_zz".to_string()]);

    let too_many: Vec<String> = (0..501).map(|i| format!("user_{i}")).collect();
    let err = c
        .batch_get_users(env.service(pb::BatchGetUsersRequest {
            clerk_ids: too_many,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let ok: Vec<String> = (0..500).map(|i| format!("user_{i}")).collect();
    let r = c
        .batch_get_users(env.service(pb::BatchGetUsersRequest { clerk_ids: ok }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.missing_clerk_ids.len(), 500);
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    r.err().map(|s| s.code())
}

#[tokio::test]
async fn each_method_accepts_only_its_declared_callers() {
    let env = start().await;
    let mut c = env.client().await;
    // Service-only commands refuse user tokens.
    assert_eq!(
        code(
            c.upsert_user(env.user("user_a", upsert("p1", 1, "user_a", "N", "a@b.co")))
                .await
        ),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(
            c.delete_user(env.user("user_a", delete("p2", 1, "user_a")))
                .await
        ),
        Some(Code::PermissionDenied)
    );
    // User-only calls refuse service tokens.
    assert_eq!(
        code(c.store_user(env.service(pb::StoreUserRequest {})).await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(
            c.get_current_user(env.service(pb::GetCurrentUserRequest {}))
                .await
        ),
        Some(Code::PermissionDenied)
    );
    // No token at all.
    assert_eq!(
        code(
            c.get_user(tonic::Request::new(pb::GetUserRequest {
                clerk_id: "user_a".into()
            }))
            .await
        ),
        Some(Code::Unauthenticated)
    );
    // A service token minted for the other service.
    let wrong = support::bearer(
        pb::GetUserRequest {
            clerk_id: "user_a".into(),
        },
        &env.service_token_for("workspace-service"),
    );
    assert_eq!(code(c.get_user(wrong).await), Some(Code::Unauthenticated));
    // Nothing was written by the refused commands.
    assert_eq!(
        apply(&env, upsert("p1", 1000, "user_a", "N", "a@b.co")).await,
        CommandOutcome::Applied
    );
}

/// A session token of a pending Clerk session (sign-in tasks left) is signed out, through the
/// service's auth layer, with a message that says why; the same user's active session passes.
#[tokio::test]
async fn a_pending_sessions_token_is_signed_out() {
    let env = start().await;
    let mut c = env.client().await;
    let clerk = &env.issuers.clerk;
    let mut claims = clerk.claims("user_p", "Pat", "pat@example.com", None);
    claims["v"] = 2.into();
    claims["sid"] = "sess_p".into();
    claims["sts"] = "pending".into();
    let pending = clerk.sign(&claims);
    let err = c
        .store_user(bearer(pb::StoreUserRequest {}, &pending))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("pending"), "{}", err.message());
    claims["sts"] = "active".into();
    let active = clerk.sign(&claims);
    c.store_user(bearer(pb::StoreUserRequest {}, &active))
        .await
        .expect("an active session stores its user");
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let env = start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", env.server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: identity_service::SERVICE_NAME.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&identity_service::SERVICE_NAME.to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn processed_event_ids_are_pruned_after_retention() {
    let env = start().await;
    apply(&env, upsert("old_evt", 1000, "user_p", "P", "p@b.co")).await;
    apply(&env, upsert("new_evt", 2000, "user_p", "P2", "p@b.co")).await;
    let pool = service_runtime::db::build_pool(env.db.url(), 2, identity_service::PLANS).unwrap();
    {
        use diesel_async::RunQueryDsl;
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("UPDATE processed_events SET processed_at = now() - interval '73 hours' WHERE event_id = 'old_evt'")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut conn = pool.get().await.unwrap();
    let pruned = service_runtime::db::prune_processed_events(
        &mut conn,
        std::time::Duration::from_secs(72 * 3600),
    )
    .await
    .unwrap();
    assert_eq!(pruned, 1);
    // The recent id is still remembered; the pruned one would be accepted again (beyond Svix's retry window).
    assert_eq!(
        apply(&env, upsert("new_evt", 2000, "user_p", "P2", "p@b.co")).await,
        CommandOutcome::Duplicate
    );
    assert_eq!(
        apply(&env, upsert("old_evt", 1000, "user_p", "P", "p@b.co")).await,
        CommandOutcome::Stale
    );
}

#[tokio::test]
async fn a_delete_racing_upserts_and_store_user_always_wins() {
    let env = start().await;
    for round in 0..30 {
        let user = format!("user_race{round}");
        let mut a = env.client().await;
        let mut b = env.client().await;
        let mut s = env.client().await;
        let up = env.service(upsert(&format!("u{round}"), 10, &user, "N", "a@b.co"));
        let up_newer = env.service(upsert(&format!("v{round}"), 999, &user, "N2", "a@b.co"));
        let del = env.service(delete(&format!("d{round}"), 500, &user));
        let store = env.user(&user, pb::StoreUserRequest {});
        let mut c = env.client().await;
        let (r1, r2, r3, r4) = tokio::join!(
            a.upsert_user(up),
            b.delete_user(del),
            s.store_user(store),
            c.upsert_user(up_newer)
        );
        assert!(
            r1.is_ok() && r2.is_ok() && r4.is_ok(),
            "{r1:?} {r2:?} {r4:?}"
        );
        // StoreUser either ran first (created) or found the tombstone; it never errors otherwise.
        if let Err(e) = r3 {
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        }
        assert!(
            stored(&env, &user).await.is_none(),
            "round {round}: deleted user came back"
        );
    }
}
