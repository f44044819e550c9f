//! Webhooks that arrive after a reconcile run deleted what they describe (a Svix retry, a
//! quarantined delivery replayed): a run's deletion is as of its start, so a change Clerk made
//! before the run never revives what it deleted, and one made after it applies.

use crate::reconcile::*;
use crate::support::*;
use stand_ins::ClerkApiStandIn;
use webhook_gateway::reconcile::config::Kind;

/// Milliseconds since the epoch, the unit of Clerk's times.
fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap().as_millis() as i64
}

/// Deleted rows of the membership of `user` in `org` (0 or 1).
async fn deleted_rows(s: &Stack, org: &str, user: &str) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM memberships \
         WHERE clerk_org_id = '{org}' AND clerk_user_id = '{user}' AND deleted"
    );
    service_harness::scalar(s.workspace_db(), &sql).await
}

/// Memberships Clerk no longer has, one of them held from before memberships carried ids (no
/// membership id: ordered by time alone), a user and an organization: reconcile deletes them.
/// Then webhooks of changes Clerk made before the run arrive: the membership's last state
/// again, a later state of it, a state of the other membership, of the user and of the
/// organization. None brings anything back. A membership Clerk makes after the run applies.
#[tokio::test]
async fn webhooks_older_than_a_run_do_not_revive_what_it_deleted() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    // Organization o has users 7o, 7o + 1 and 7o + 2; user 19 none.
    seed(&api, 20, 3, 3);
    let cfg = config(&s, &api);
    assert!(run(&cfg).await.completed);
    let (org0, org1, org2) = (org_id(0), org_id(1), org_id(2));
    let (legacy, keyed, gone_user) = (user_id(1), user_id(8), user_id(19));
    service_harness::execute(
        s.workspace_db(),
        &format!(
            "UPDATE memberships SET clerk_membership_id = '', membership_created_at = '-infinity'
              WHERE clerk_org_id = '{org0}' AND clerk_user_id = '{legacy}'"
        ),
    )
    .await;
    api.remove_membership("orgmem_0x1");
    api.remove_membership("orgmem_1x8");
    api.remove_user(&gone_user);
    for u in 14..17 {
        api.remove_membership(&format!("orgmem_2x{u}"));
    }
    api.remove_org(&org2);

    // Each request to Clerk takes 250 ms: the run asks Clerk about a candidate well after it
    // started.
    api.set_latency(std::time::Duration::from_millis(250));
    let before = now_ms();
    let summary = run(&cfg).await;
    api.set_latency(std::time::Duration::ZERO);
    let after = now_ms() + 1;
    assert!(summary.completed, "{}", summary.table());
    for (k, deleted) in [
        (Kind::Memberships, 5),
        (Kind::Users, 1),
        (Kind::Organizations, 1),
    ] {
        assert_eq!(kind(&summary, k).deleted, deleted, "{}", summary.table());
    }
    assert_eq!(deleted_rows(&s, &org0, &legacy).await, 1);

    // Changes Clerk made before the run, delivered now.
    let membership = |id: (&str, i64), org: &str, user: &str, role: &str, at: i64| {
        membership_event_of("organizationMembership.updated", id, org, user, role, at)
    };
    let stale = [
        // The legacy membership's state as held (same `updated_at`).
        membership(("orgmem_0x1", C + 1), &org0, &legacy, "org:member", C + 1),
        // A later state of it, from just before the run.
        membership(
            ("orgmem_0x1", C + 1),
            &org0,
            &legacy,
            "org:admin",
            before - 1,
        ),
        // A state Clerk gave it after the run started, before the run found it gone (the
        // removal's own webhook lost): older than the deletion all the same.
        membership(
            ("orgmem_0x1", C + 1),
            &org0,
            &legacy,
            "org:admin",
            before + 200,
        ),
        membership(
            ("orgmem_1x8", C + 2),
            &org1,
            &keyed,
            "org:admin",
            before - 1,
        ),
        user_event("user.updated", &gone_user, "Late", before - 1),
        org_event("organization.updated", &org2, "Late", before - 1),
    ];
    for (n, event) in stale.iter().enumerate() {
        let (code, body) = s.send(&format!("msg_stale_{n}"), event).await;
        assert_eq!(code, 200, "{n}: {body}");
    }
    assert_eq!(
        s.members(&org0).await,
        vec![
            (user_id(0), "org:admin".to_owned()),
            (user_id(2), "org:member".to_owned())
        ],
        "the legacy membership stays deleted"
    );
    assert_eq!(deleted_rows(&s, &org0, &legacy).await, 1);
    assert!(
        !s.members(&org1).await.iter().any(|(u, _)| *u == keyed),
        "the keyed membership stays deleted"
    );
    assert!(s.user(&gone_user).await.is_none(), "the user stays deleted");
    assert!(
        !s.workspace_exists(&org2).await,
        "the workspace stays deleted"
    );

    // The user invited again after the run: a new membership, which applies.
    let again = membership_event_of(
        "organizationMembership.created",
        ("orgmem_0x1again", after),
        &org0,
        &legacy,
        "org:admin",
        after,
    );
    assert_eq!(s.send("msg_after_run", &again).await.0, 200);
    assert!(
        s.members(&org0)
            .await
            .contains(&(legacy.clone(), "org:admin".to_owned())),
        "{:?}",
        s.members(&org0).await
    );
}
