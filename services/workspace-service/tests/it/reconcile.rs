//! The reconcile comparisons as the gateway calls them: a workspace or membership deleted here
//! compares DELETED_HERE (the gateway asks Clerk about it), one held with newer state NEWER,
//! and the comparison writes none of them.

use crate::support;

use support::{Env, T0, delete_ws, membership, start_with, ts, upsert_ws};
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::Comparison as Cmp;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;

/// A page that covers the whole listing order, for a run that started now.
fn page_of<T>(
    items: Vec<T>,
) -> (
    String,
    Vec<T>,
    Option<pb::ListedRange>,
    Option<prost_types::Timestamp>,
) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (
        uuid::Uuid::now_v7().to_string(),
        items,
        Some(pb::ListedRange::default()),
        ts(now),
    )
}

/// An organization as Clerk lists it, last updated at `T0 + at`.
fn listed_org(org: &str, name: &str, at: i64) -> pb::UpsertWorkspaceCommand {
    pb::UpsertWorkspaceCommand {
        created_at: ts(T0),
        ..upsert_ws("", at, org, name)
    }
}

/// Membership `id` (created at `T0 + created`) as Clerk lists it, last updated at `T0 + at`.
fn listed_membership(
    id: &str,
    created: i64,
    at: i64,
    org: &str,
    user: &str,
) -> pb::UpsertMembershipCommand {
    pb::UpsertMembershipCommand {
        clerk_membership_id: id.into(),
        membership_created_at: ts(T0 + created),
        ..membership("", at, org, user, "org:member")
    }
}

async fn compare_orgs(env: &Env, orgs: Vec<pb::UpsertWorkspaceCommand>) -> Vec<Cmp> {
    let (run_id, workspaces, range, started_at) = page_of(orgs);
    let req = pb::CompareWorkspacesRequest {
        run_id,
        workspaces,
        range,
        started_at,
        scope_id: String::new(),
    };
    let mut c = WorkspaceServiceClient::new(env.server.channel().await);
    let r = c.compare_workspaces(env.issuers.gateway("workspace-service", req));
    let results = r.await.unwrap().into_inner().results;
    results
        .into_iter()
        .map(|r| Cmp::try_from(r).unwrap())
        .collect()
}

async fn compare_memberships(env: &Env, listed: Vec<pb::UpsertMembershipCommand>) -> Vec<Cmp> {
    let (run_id, memberships, range, started_at) = page_of(listed);
    let req = pb::CompareMembershipsRequest {
        run_id,
        memberships,
        range,
        started_at,
        scope_id: String::new(),
    };
    let mut c = WorkspaceServiceClient::new(env.server.channel().await);
    let r = c.compare_memberships(env.issuers.gateway("workspace-service", req));
    let results = r.await.unwrap().into_inner().results;
    results
        .into_iter()
        .map(|r| Cmp::try_from(r).unwrap())
        .collect()
}

#[tokio::test]
async fn a_workspace_deleted_here_compares_deleted_here_and_a_newer_one_newer() {
    let env = start_with(false).await;
    let mut c = env.client().await;
    for org in ["org_newer", "org_deleted", "org_same"] {
        c.upsert_workspace(env.service(upsert_ws(&format!("u-{org}"), 20, org, "Acme")))
            .await
            .unwrap();
    }
    c.delete_workspace(env.service(delete_ws("d-1", 30, "org_deleted")))
        .await
        .unwrap();
    // Deleted here before any creation arrived: a tombstone alone.
    c.delete_workspace(env.service(delete_ws("d-2", 30, "org_never_held")))
        .await
        .unwrap();
    let results = compare_orgs(
        &env,
        vec![
            listed_org("org_newer", "Acme", 10),
            // Listed with a later state than the deletion: still deleted here.
            listed_org("org_deleted", "Acme", 99),
            listed_org("org_never_held", "Other", 5),
            listed_org("org_same", "Acme", 20),
            listed_org("org_missing", "New", 5),
        ],
    )
    .await;
    assert_eq!(
        results,
        [
            Cmp::Newer,
            Cmp::DeletedHere,
            Cmp::DeletedHere,
            Cmp::Same,
            Cmp::Missing
        ]
    );
    // The comparison wrote nothing: still deleted, still absent.
    let live = "SELECT count(*) FROM workspaces WHERE deleted_at IS NULL";
    assert_eq!(env.scalar(live).await, 2);
}

#[tokio::test]
async fn a_membership_deleted_here_compares_deleted_here_by_its_own_id_only() {
    let env = start_with(false).await;
    let mut c = env.client().await;
    for org in ["org_a", "org_gone"] {
        c.upsert_workspace(env.service(upsert_ws(&format!("u-{org}"), 1, org, "Acme")))
            .await
            .unwrap();
    }
    let held = [
        // Deleted below.
        ("orgmem_del", "org_a", "user_del", 10),
        // Held with a later update than listed.
        ("orgmem_new", "org_a", "user_new", 30),
        // Of an organization deleted here below.
        ("orgmem_gone", "org_gone", "user_x", 10),
    ];
    for (id, org, user, at) in held {
        let cmd = listed_membership(id, 5, at, org, user);
        let cmd = pb::UpsertMembershipCommand {
            event_id: format!("m-{id}"),
            ..cmd
        };
        c.upsert_membership(env.service(cmd)).await.unwrap();
    }
    c.delete_membership(env.service(pb::DeleteMembershipCommand {
        event_id: "dm-1".into(),
        occurred_at: ts(T0 + 20),
        clerk_org_id: "org_a".into(),
        clerk_user_id: "user_del".into(),
        clerk_membership_id: "orgmem_del".into(),
        membership_created_at: ts(T0 + 5),
        ..Default::default()
    }))
    .await
    .unwrap();
    c.delete_workspace(env.service(delete_ws("d-gone", 40, "org_gone")))
        .await
        .unwrap();
    let results = compare_memberships(
        &env,
        vec![
            listed_membership("orgmem_del", 5, 15, "org_a", "user_del"),
            // The same user invited again after the deletion: another membership, written.
            listed_membership("orgmem_again", 50, 50, "org_a", "user_del"),
            listed_membership("orgmem_new", 5, 20, "org_a", "user_new"),
            // Its organization is deleted here: reported by the organization's comparison.
            listed_membership("orgmem_gone", 5, 10, "org_gone", "user_x"),
        ],
    )
    .await;
    assert_eq!(
        results,
        [Cmp::DeletedHere, Cmp::Older, Cmp::Newer, Cmp::Newer]
    );
    let live = "SELECT count(*) FROM memberships WHERE NOT deleted AND clerk_org_id = 'org_a'";
    assert_eq!(env.scalar(live).await, 1, "the comparison wrote nothing");
}
