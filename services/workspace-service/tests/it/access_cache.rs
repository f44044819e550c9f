//! The access cache is coherent: every change that alters a caller's access reaches the
//! replica that applied it at once and every other replica within the stated bound (80 ms
//! after the change commits, tested at 100 ms after its command was answered), and a replica
//! that loses its notification connection forgets what it cached.

use crate::support::{self, second_replica_with_metrics, start_with};
use std::time::Duration;
use tokio::time::{Instant, sleep_until};
use tonic::Code;
use tonic::transport::Channel;
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;

/// The bound the issue states: a change is seen by every replica this long after its command
/// was answered.
const BOUND: Duration = Duration::from_millis(100);

/// A caller's `ListChannels` request, with a fresh token.
type Read<'a> = dyn Fn() -> tonic::Request<pb::ListChannelsRequest> + 'a;

fn list() -> pb::ListChannelsRequest {
    pb::ListChannelsRequest {
        clerk_org_id: "org_a".into(),
        ..Default::default()
    }
}

fn after_now(ahead: i64) -> i64 {
    token_auth::signing::now_secs() - support::T0 + ahead
}

/// Reads until both replicas have cached the caller (their caches answer once their listener
/// heard its first ping).
async fn prime(
    clients: &mut [&mut WorkspaceServiceClient<Channel>],
    req: impl Fn() -> tonic::Request<pb::ListChannelsRequest>,
) {
    for c in clients.iter_mut() {
        for _ in 0..5 {
            c.list_channels(req()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}

fn refused(r: Result<tonic::Response<pb::ListChannelsResponse>, tonic::Status>, why: &str) {
    let e = r.expect_err(why);
    assert!(
        matches!(e.code(), Code::PermissionDenied | Code::NotFound),
        "{why}: {e:?}"
    );
}

#[tokio::test]
async fn each_change_refuses_at_once_here_and_within_the_bound_on_another_replica() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let (_b, mut b, b_metrics) = second_replica_with_metrics(&env).await;
    let mut a = env.client().await;
    for (user, role) in [
        ("user_demoted", "org:admin"),
        ("user_gone", "org:member"),
        ("user_del", "org:member"),
        ("user_banned", "org:member"),
        ("user_stay", "org:member"),
    ] {
        a.upsert_membership(env.service(support::membership(
            &format!("m-{user}"),
            1,
            "org_a",
            user,
            role,
        )))
        .await
        .unwrap();
    }
    let demoted = || env.admin("user_demoted", "org_a", list());
    let gone = || env.member("user_gone", "org_a", list());
    let deleted = || env.member("user_del", "org_a", list());
    let banned = || env.member("user_banned", "org_a", list());
    let stay = || env.member("user_stay", "org_a", list());
    for req in [&demoted as &dyn Fn() -> _, &gone, &deleted, &banned, &stay] {
        prime(&mut [&mut a, &mut b], req).await;
    }
    // Replica B answered from its cache (a caller's first read there fills it, the next four
    // may hit): what it refuses below, it had cached.
    let hits = r#"cache_lookups_total{cache="access",result="hit"}"#;
    let b_hits = service_harness::metric(b_metrics, hits)
        .await
        .unwrap_or(0.0);
    assert!(
        b_hits >= 4.0,
        "replica B's access cache answered {b_hits} reads of 25"
    );

    // Each change goes through replica A (the gateway's commands), dated after the tokens.
    let changes: Vec<(&str, Box<Read>)> = vec![
        ("role changed", Box::new(demoted)),
        ("membership removed", Box::new(gone)),
        ("user deleted", Box::new(deleted)),
        ("user banned", Box::new(banned)),
    ];
    for (i, (what, req)) in changes.iter().enumerate() {
        match i {
            0 => {
                a.upsert_membership(env.service(support::membership(
                    "demote",
                    after_now(2),
                    "org_a",
                    "user_demoted",
                    "org:member",
                )))
                .await
                .unwrap();
            }
            1 => {
                a.delete_membership(env.service(pb::DeleteMembershipCommand {
                    event_id: "remove".into(),
                    occurred_at: support::ts(support::T0 + after_now(2)),
                    clerk_org_id: "org_a".into(),
                    clerk_user_id: "user_gone".into(),
                    event_time: support::ts(support::T0 + after_now(2)),
                    ..Default::default()
                }))
                .await
                .unwrap();
            }
            2 => {
                a.remove_user(env.service(pb::RemoveUserCommand {
                    event_id: "delete".into(),
                    occurred_at: support::ts(support::T0 + after_now(2)),
                    clerk_user_id: "user_del".into(),
                    ..Default::default()
                }))
                .await
                .unwrap();
            }
            _ => {
                a.revoke_user_tokens(env.service(pb::RevokeUserTokensCommand {
                    event_id: "ban".into(),
                    revoked_at: support::ts(support::T0 + after_now(2)),
                    clerk_user_id: "user_banned".into(),
                    ..Default::default()
                }))
                .await
                .unwrap();
            }
        }
        let answered = Instant::now();
        refused(a.list_channels(req()).await, &format!("{what}: replica A"));
        sleep_until(answered + BOUND).await;
        refused(b.list_channels(req()).await, &format!("{what}: replica B"));
        // Others' changes leave an unchanged member alone.
        b.list_channels(stay()).await.unwrap();
    }

    // The workspace deleted: nobody reads it any more, on either replica.
    a.delete_workspace(env.service(support::delete_ws("gone", after_now(2), "org_a")))
        .await
        .unwrap();
    let answered = Instant::now();
    refused(
        a.list_channels(stay()).await,
        "workspace deleted: replica A",
    );
    sleep_until(answered + BOUND).await;
    refused(
        b.list_channels(stay()).await,
        "workspace deleted: replica B",
    );
}

/// A replica that loses its notification connection forgets what it cached: changes made
/// until it listens again are not heard.
#[tokio::test]
async fn a_replica_that_loses_its_notifications_forgets_what_it_cached() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut a = env.client().await;
    // A removal nobody announces (triggers off for this session), as if its notification was
    // lost: the replica keeps serving what it cached. On a loaded machine the cache may miss
    // its bound for a moment and read through (then it holds the removal): try another member.
    let mut cached = None;
    for attempt in 0..5 {
        let user = format!("user_x{attempt}");
        a.upsert_membership(env.service(support::membership(
            &format!("m{attempt}"),
            1,
            "org_a",
            &user,
            "org:member",
        )))
        .await
        .unwrap();
        let member = || env.member(&user, "org_a", list());
        prime(&mut [&mut a], member).await;
        service_harness::execute(
            env.db.url(),
            &format!(
                "SET session_replication_role = replica;
                 UPDATE memberships SET deleted = true, deleted_at = now() + interval '2 seconds',
                        source_updated_at = now() + interval '2 seconds'
                  WHERE clerk_org_id = 'org_a' AND clerk_user_id = '{user}'"
            ),
        )
        .await;
        if a.list_channels(member()).await.is_ok() {
            cached = Some(user);
            break;
        }
    }
    let user = cached.expect("never served from the cache");
    let member = || env.member(&user, "org_a", list());
    // The notification connections (the access cache's and the channel cache's) cut: once
    // listening again, the entry is gone.
    service_harness::cut_cache_notifications(env.db.url(), 1).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        refused(a.list_channels(member()).await, "after the cut");
    }
}
