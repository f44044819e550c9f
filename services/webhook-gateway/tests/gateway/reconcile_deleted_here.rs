//! `webhook-gateway reconcile`, the built binary, when Clerk lists what is deleted here: a user,
//! organization or membership deleted here that Clerk still has (asked for alone) is counted,
//! logged with its id, revived by nobody, and fails the run (exit 1, a dry run too); one that
//! Clerk deleted right after listing it (its own GET answers `resource_not_found`) is a race,
//! counted stale, and the run succeeds.

use crate::reconcile_guards::*;
use crate::support::*;
use serde_json::{Value, json};
use service_harness::eventually;
use stand_ins::DEFAULT_INSTANCE;
use std::time::Duration;

/// A deletion webhook of our instance, applied: the resource is deleted here only. Returns once
/// a deleted workspace's rows are purged (in the background), so what is held stays put.
async fn deleted_here(s: &Stack, svix_id: &str, mut event: Value) {
    event["instance_id"] = json!(DEFAULT_INSTANCE);
    assert_eq!(s.send(svix_id, &event).await.0, 200);
    let jobs = "SELECT count(*) FROM purge_jobs";
    eventually("purges done", Duration::from_secs(20), || async {
        service_harness::scalar(s.workspace_db(), jobs).await == 0
    })
    .await;
}

/// The run's error-level log lines that name `id` as deleted here but live in Clerk.
fn logged_live(ran: &Ran, id: &str) -> usize {
    ran.stderr
        .lines()
        .filter(|l| l.contains("\"ERROR\"") && l.contains("Clerk still has it") && l.contains(id))
        .count()
}

/// The line and the counts of a run that found resources deleted here and live in Clerk.
fn assert_failed_on(ran: &Ran, kind: &str, counts: &str) {
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(ran.count(kind, "deleted_here_live_in_clerk"), 1);
    assert!(
        ran.last_line
            .starts_with("webhook-gateway reconcile: stopped:")
            && ran
                .last_line
                .contains(&format!("deleted here but still live in Clerk: {counts}"))
            && ran.last_line.contains("deploy/README.md"),
        "{}",
        ran.last_line
    );
    assert_eq!(ran.summary["completed"], false);
}

#[tokio::test]
async fn a_user_deleted_here_and_live_in_clerk_fails_the_run_and_stays_deleted() {
    let (s, api) = backfilled(20, 3, 3).await;
    let victim = user_id(4);
    deleted_here(
        &s,
        "msg_wrong_user_delete",
        deleted_event("user.deleted", "user", &victim, C + 1000),
    )
    .await;
    assert!(s.user(&victim).await.is_none());
    let before = held(&s).await;
    let runs: [&[&str]; 2] = [&["--dry-run"], &[]];
    for args in runs {
        let ran = reconcile(&s, &api.base_url(), args, &[]).await;
        assert_failed_on(&ran, "users", "users 1");
        assert_eq!(logged_live(&ran, &victim), 1, "{}", ran.stderr);
        for kind in ["users", "organizations", "memberships"] {
            assert_eq!(
                ran.count(kind, "deleted_here_live_in_clerk"),
                u64::from(kind == "users")
            );
            for field in ["created", "updated", "deleted"] {
                assert_eq!(ran.count(kind, field), 0, "{kind}.{field}: {}", ran.summary);
            }
        }
        // Its membership (of organization 2) went with it here: the user's line covers it.
        assert_eq!(ran.count("memberships", "stale"), 1);
        assert_eq!(
            held(&s).await,
            before,
            "{args:?}: nothing written or deleted"
        );
        assert!(s.user(&victim).await.is_none(), "not revived");
    }
    let asked = format!("/v1/users/{victim}");
    assert!(
        api.calls()
            .iter()
            .any(|c| c.path == asked && c.status == 200)
    );
}

#[tokio::test]
async fn a_workspace_deleted_here_and_live_in_clerk_fails_the_run_and_stays_deleted() {
    let (s, api) = backfilled(20, 3, 3).await;
    let victim = org_id(1);
    deleted_here(
        &s,
        "msg_wrong_org_delete",
        deleted_event("organization.deleted", "organization", &victim, C + 1000),
    )
    .await;
    assert!(!s.workspace_exists(&victim).await);
    let before = held(&s).await;
    let ran = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_failed_on(&ran, "organizations", "organizations 1");
    assert_eq!(logged_live(&ran, &victim), 1, "{}", ran.stderr);
    assert_eq!(ran.count("users", "deleted_here_live_in_clerk"), 0);
    // Its three memberships went with it here: the organization's line covers them.
    assert_eq!(ran.count("memberships", "deleted_here_live_in_clerk"), 0);
    assert_eq!(ran.count("memberships", "stale"), 3);
    for kind in ["users", "organizations", "memberships"] {
        for field in ["created", "updated", "deleted"] {
            assert_eq!(ran.count(kind, field), 0, "{kind}.{field}: {}", ran.summary);
        }
    }
    assert_eq!(held(&s).await, before, "nothing written or deleted");
    assert!(!s.workspace_exists(&victim).await, "not revived");
}

/// A membership deleted here keeps its id; Clerk listing that very membership is the same
/// divergence (asked of Clerk by the organization's members, filtered by the user).
#[tokio::test]
async fn a_membership_deleted_here_and_live_in_clerk_fails_the_run() {
    let (s, api) = backfilled(20, 3, 3).await;
    // Organization 0's second member, user 1, created at C + 1.
    let (org, user, id) = (org_id(0), user_id(1), membership_id(0, 1));
    let event = membership_event_of(
        "organizationMembership.deleted",
        (&id, C + 1),
        &org,
        &user,
        "org:member",
        C + 1000,
    );
    deleted_here(&s, "msg_wrong_membership_delete", event).await;
    assert_eq!(s.members(&org).await.len(), 2);
    let before = held(&s).await;
    let ran = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_failed_on(&ran, "memberships", "memberships 1");
    assert_eq!(logged_live(&ran, &id), 1, "{}", ran.stderr);
    assert_eq!(ran.count("memberships", "created"), 0);
    assert_eq!(held(&s).await, before, "nothing written or deleted");
    assert_eq!(s.members(&org).await.len(), 2, "not revived");
}

/// Deleted here, listed by Clerk, then deleted in Clerk before the run asks for it alone (a
/// deletion webhook that overtook the listing): a race, counted stale; the run succeeds.
#[tokio::test]
async fn deleted_here_and_gone_from_clerk_when_asked_is_a_race_and_the_run_succeeds() {
    let (s, api) = backfilled(20, 3, 3).await;
    let (user, org) = (user_id(5), org_id(2));
    deleted_here(
        &s,
        "msg_user_gone",
        deleted_event("user.deleted", "user", &user, C + 1000),
    )
    .await;
    deleted_here(
        &s,
        "msg_org_gone",
        deleted_event("organization.deleted", "organization", &org, C + 1000),
    )
    .await;
    api.remove_users_when_listed(std::slice::from_ref(&user));
    api.remove_orgs_when_listed(std::slice::from_ref(&org));
    let before = held(&s).await;
    let calls_before = api.calls().len();
    let ran = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    for (kind, id) in [("users", &user), ("organizations", &org)] {
        assert_eq!(ran.count(kind, "deleted_here_live_in_clerk"), 0);
        assert_eq!(ran.count(kind, "stale"), 1, "{}", ran.summary);
        assert_eq!(logged_live(&ran, id), 0);
    }
    assert_eq!(held(&s).await, before, "nothing written or deleted");
    // Each was asked of Clerk alone, which answered its own 404.
    let asked: Vec<_> = api.calls()[calls_before..]
        .iter()
        .filter(|c| {
            c.path == format!("/v1/users/{user}") || c.path == format!("/v1/organizations/{org}")
        })
        .map(|c| c.status)
        .collect();
    assert_eq!(asked, [404, 404]);
}
