//! CompareUsers as the gateway calls it: a user deleted here compares DELETED_HERE (the gateway
//! asks Clerk about it), one held with newer state NEWER, and the comparison writes neither.

use crate::support;

use support::{Env, start, ts};
use vbase_proto::identity::v1 as pb;
use vbase_proto::identity::v1::Comparison as Cmp;

const T0: i64 = 1_700_000_000;

/// User `id` as Clerk has it, last updated at `T0 + at`.
fn user(event: &str, at: i64, id: &str, name: &str) -> pb::UpsertUserCommand {
    pb::UpsertUserCommand {
        event_id: event.into(),
        occurred_at: ts(T0 + at),
        clerk_id: id.into(),
        name: name.into(),
        email: format!("{id}@example.org"),
        image_url: String::new(),
        created_at: ts(T0),
        ..Default::default()
    }
}

async fn compare(env: &Env, users: Vec<pb::UpsertUserCommand>) -> Vec<Cmp> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let req = pb::CompareUsersRequest {
        run_id: uuid::Uuid::now_v7().to_string(),
        users,
        range: Some(pb::ListedRange::default()),
        started_at: ts(now),
        scope_id: String::new(),
    };
    let mut c = env.client().await;
    let r = c.compare_users(env.issuers.gateway("identity-service", req));
    let results = r.await.unwrap().into_inner().results;
    results
        .into_iter()
        .map(|r| Cmp::try_from(r).unwrap())
        .collect()
}

#[tokio::test]
async fn a_user_deleted_here_compares_deleted_here_and_a_newer_one_newer() {
    let env = start().await;
    let mut c = env.client().await;
    for id in ["user_newer", "user_deleted", "user_same", "user_older"] {
        c.upsert_user(env.service(user(&format!("u-{id}"), 20, id, "Ada")))
            .await
            .unwrap();
    }
    let delete = |event: &str, id: &str| {
        env.service(pb::DeleteUserCommand {
            event_id: event.into(),
            occurred_at: ts(T0 + 30),
            clerk_id: id.into(),
            ..Default::default()
        })
    };
    c.delete_user(delete("d-1", "user_deleted")).await.unwrap();
    // Deleted here before any creation arrived: a tombstone alone.
    c.delete_user(delete("d-2", "user_never_held"))
        .await
        .unwrap();
    let results = compare(
        &env,
        vec![
            user("", 10, "user_newer", "Ada"),
            // Listed with a later state than the deletion: still deleted here.
            user("", 99, "user_deleted", "Ada"),
            user("", 5, "user_never_held", "Bo"),
            user("", 20, "user_same", "Ada"),
            user("", 25, "user_older", "Ada Renamed"),
            user("", 5, "user_missing", "Cy"),
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
            Cmp::Older,
            Cmp::Missing
        ]
    );
    // The comparison wrote nothing: the deleted stay deleted, the missing absent.
    let held = "SELECT count(*) FROM users WHERE deleted_at IS NULL";
    assert_eq!(service_harness::scalar(env.db.url(), held).await, 3);
    let mut gone = 0;
    for id in ["user_deleted", "user_never_held", "user_missing"] {
        let r = c
            .get_user(env.service(pb::GetUserRequest {
                clerk_id: id.into(),
            }))
            .await;
        gone += usize::from(r.is_err_and(|s| s.code() == tonic::Code::NotFound));
    }
    assert_eq!(gone, 3);
}
