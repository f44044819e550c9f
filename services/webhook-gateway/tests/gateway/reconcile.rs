//! Reconcile runs against a stand-in of Clerk's Backend API that pages like Clerk, into the
//! real services: backfill, drift repaired, webhooks during a run, dry runs, failures part way,
//! 429 and the request rate.

use crate::support::*;
use service_runtime::LogFormat;
use stand_ins::{ClerkApiStandIn, membership_json, org_json, user_json};
use std::time::{Duration, Instant};
use vbase_proto::identity::v1 as idp;
use webhook_gateway::reconcile::config::{ClerkApiArgs, Kind, ReconcileConfig};
use webhook_gateway::reconcile::execute;
use webhook_gateway::reconcile::summary::{KindSummary, Summary};

pub(crate) const KEY: &str = "sk_test_standin_key";
/// Clerk's clock for the seeded data (ms).
pub(crate) const C: i64 = 1_760_000_000_000;

pub(crate) fn config(s: &Stack, api: &ClerkApiStandIn) -> ReconcileConfig {
    ReconcileConfig {
        clerk: ClerkApiArgs {
            clerk_secret_key: KEY.into(),
            clerk_api_url: api.base_url(),
            clerk_api_max_requests: 10_000,
            clerk_api_window_secs: 1,
            clerk_api_page_size: 500,
            clerk_api_max_retries: 2,
            clerk_api_retry_base_ms: 20,
            clerk_api_timeout_secs: 5,
        },
        downstream: s.downstream.clone(),
        service_retry: Default::default(),
        dry_run: false,
        user: None,
        org: None,
        only: Vec::new(),
        json: false,
        // The stand-in's instance, as the services record none here.
        instance: Some(stand_ins::DEFAULT_INSTANCE.into()),
        move_to_instance: None,
        allow_mass_delete: false,
        reconcile_max_deletes: None,
        log_format: LogFormat::Pretty,
    }
}

/// Far above a run's time on a loaded machine: a run that hangs fails its test, saying so,
/// instead of holding the test binary forever.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

pub(crate) async fn run(cfg: &ReconcileConfig) -> Summary {
    tokio::time::timeout(RUN_DEADLINE, execute(cfg))
        .await
        .unwrap_or_else(|_| panic!("reconcile did not finish within {RUN_DEADLINE:?}: it hangs"))
        .expect("reconcile ran")
}

pub(crate) fn kind(s: &Summary, k: Kind) -> &KindSummary {
    s.kinds
        .iter()
        .find(|x| x.kind == k.name())
        .unwrap_or_else(|| panic!("no {} in {s:?}", k.name()))
}

/// (created, updated, unchanged, deleted, stale) of a kind.
pub(crate) fn counts(s: &Summary, k: Kind) -> (u64, u64, u64, u64, u64) {
    let x = kind(s, k);
    (x.created, x.updated, x.unchanged, x.deleted, x.stale)
}

pub(crate) fn user_id(i: usize) -> String {
    format!("user_r{i:05}")
}

pub(crate) fn org_id(i: usize) -> String {
    format!("org_r{i:04}")
}

/// `users` users, `orgs` organizations, each with `per_org` members (`org:admin` first).
pub(crate) fn seed(api: &ClerkApiStandIn, users: usize, orgs: usize, per_org: usize) {
    for i in 0..users {
        let id = user_id(i);
        let t = C + i as i64;
        api.put_user(user_json(
            &id,
            &format!("U{i}"),
            &format!("{id}@example.org"),
            t,
            t,
        ));
    }
    for o in 0..orgs {
        let t = C + o as i64;
        api.put_org(org_json(
            &org_id(o),
            &format!("Org {o}"),
            &user_id(o % users),
            t,
            t,
        ));
        for k in 0..per_org {
            let u = (o * 7 + k) % users;
            let role = if k == 0 { "org:admin" } else { "org:member" };
            api.put_membership(membership_json(
                &format!("orgmem_{o}x{u}"),
                &org_id(o),
                &user_id(u),
                role,
                t + k as i64,
                t + k as i64,
            ));
        }
    }
}

#[tokio::test]
async fn a_backfill_fills_empty_databases_and_a_second_run_changes_nothing() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 2000, 200, 25);
    let cfg = config(&s, &api);
    let first = run(&cfg).await;
    assert!(first.completed, "{}", first.table());
    assert_eq!(counts(&first, Kind::Users), (2000, 0, 0, 0, 0));
    assert_eq!(counts(&first, Kind::Organizations), (200, 0, 0, 0, 0));
    assert_eq!(counts(&first, Kind::Memberships), (5000, 0, 0, 0, 0));
    assert_eq!(first.requests, api.requests(), "every request is counted");

    let u = s.user(&user_id(1234)).await.expect("backfilled user");
    assert_eq!(
        (u.name.as_str(), u.email.as_str()),
        ("U1234 Example", "user_r01234@example.org")
    );
    assert_eq!(
        s.workspace_name(&org_id(57)).await.as_deref(),
        Some("Org 57")
    );
    let members = s.members(&org_id(57)).await;
    assert_eq!(members.len(), 25);
    assert!(members.contains(&(user_id(57 * 7), "org:admin".to_string())));

    let second = run(&cfg).await;
    assert!(second.completed, "{}", second.table());
    assert_eq!(counts(&second, Kind::Users), (0, 0, 2000, 0, 0));
    assert_eq!(counts(&second, Kind::Organizations), (0, 0, 200, 0, 0));
    assert_eq!(counts(&second, Kind::Memberships), (0, 0, 5000, 0, 0));
    assert_eq!(
        kind(&second, Kind::Users).kept,
        0,
        "no user taken for missing"
    );

    // Gone from the middle of the third page of four: found by its page's stretch alone.
    api.remove_user(&user_id(1234));
    let third = run(&cfg).await;
    assert_eq!(counts(&third, Kind::Users), (0, 0, 1999, 1, 0));
    assert_eq!(kind(&third, Kind::Users).kept, 0);
    assert!(s.user(&user_id(1234)).await.is_none());
    assert!(s.user(&user_id(1233)).await.is_some());
}

#[tokio::test]
async fn one_run_converges_every_kind_of_drift_and_a_dry_run_reports_it_first() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 20, 3, 5);
    let cfg = config(&s, &api);
    assert!(run(&cfg).await.completed);

    // What the webhooks lost.
    let (renamed, gone_user) = (user_id(1), user_id(2));
    api.put_user(user_json(
        &renamed,
        "Renamed",
        "new@example.org",
        C + 1,
        C + 999,
    ));
    api.remove_user(&gone_user);
    let gone_org = org_id(2);
    api.remove_org(&gone_org);
    for k in 0..5 {
        api.remove_membership(&format!("orgmem_2x{}", (2 * 7 + k) % 20));
    }
    // In org 0: user 1 removed, user 2 (deleted above) leaves with it, user 3 promoted.
    api.remove_membership("orgmem_0x1");
    api.remove_membership("orgmem_0x2");
    api.put_membership(membership_json(
        "orgmem_0x3",
        &org_id(0),
        &user_id(3),
        "org:admin",
        C + 3,
        C + 999,
    ));
    // A user we hold that Clerk never had.
    assert_eq!(
        s.send(
            "msg_ghost",
            &user_event("user.created", "user_ghost", "Ghost", C)
        )
        .await
        .0,
        200
    );

    let mut dry = cfg.clone();
    dry.dry_run = true;
    let planned = run(&dry).await;
    assert!(planned.completed, "{}", planned.table());
    assert_eq!(
        s.user(&renamed).await.unwrap().name,
        "U1 Example",
        "a dry run writes nothing"
    );
    assert!(s.user("user_ghost").await.is_some());
    assert!(s.workspace_exists(&gone_org).await);

    let applied = run(&cfg).await;
    assert!(applied.completed, "{}", applied.table());
    for k in [Kind::Users, Kind::Organizations, Kind::Memberships] {
        let (p, a) = (kind(&planned, k), kind(&applied, k));
        assert_eq!(
            (p.created, p.updated, p.deleted),
            (a.created, a.updated, a.deleted),
            "{}: the dry run reports what the run applies",
            k.name()
        );
    }
    assert_eq!(counts(&applied, Kind::Users), (0, 1, 18, 2, 0));
    assert_eq!(kind(&applied, Kind::Organizations).deleted, 1);
    assert_eq!(kind(&applied, Kind::Memberships).updated, 1);

    let u = s.user(&renamed).await.unwrap();
    assert_eq!(
        (u.name.as_str(), u.email.as_str()),
        ("Renamed Example", "new@example.org")
    );
    assert!(s.user(&gone_user).await.is_none());
    assert!(s.user("user_ghost").await.is_none());
    assert!(!s.workspace_exists(&gone_org).await);
    let members = s.members(&org_id(0)).await;
    assert!(
        !members.iter().any(|(u, _)| *u == user_id(1)),
        "{members:?}"
    );
    assert!(
        !members.iter().any(|(u, _)| *u == user_id(2)),
        "{members:?}"
    );
    assert!(
        members.contains(&(user_id(3), "org:admin".to_string())),
        "{members:?}"
    );

    let again = run(&cfg).await;
    for k in [Kind::Users, Kind::Organizations, Kind::Memberships] {
        let x = kind(&again, k);
        assert_eq!(
            (x.created, x.updated, x.deleted),
            (0, 0, 0),
            "{}",
            again.table()
        );
    }
}

#[tokio::test]
async fn a_newer_webhook_during_a_run_is_not_rolled_back() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    api.put_user(user_json("user_race", "Listed", "a@example.org", C, C + 10));
    api.set_latency(Duration::from_millis(400));
    let cfg = config(&s, &api);
    let mut only_users = cfg.clone();
    only_users.only = vec![Kind::Users];
    let webhook = async {
        // Lands while the run waits for its first page.
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.send(
            "msg_newer",
            &user_event("user.updated", "user_race", "Newer", C + 20),
        )
        .await
        .0
    };
    let (summary, delivered) = tokio::join!(run(&only_users), webhook);
    assert_eq!(delivered, 200);
    assert!(summary.completed, "{}", summary.table());
    assert_eq!(kind(&summary, Kind::Users).stale, 1, "{}", summary.table());
    assert_eq!(s.user("user_race").await.unwrap().name, "Newer Example");
}

#[tokio::test]
async fn a_listing_that_fails_part_way_deletes_nothing() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 1200, 1, 2);
    let mut cfg = config(&s, &api);
    assert!(run(&cfg).await.completed);
    // The first run confirmed the instance: the next reads only its listing.
    cfg.instance = None;
    // Held here, gone from Clerk: a deletion candidate, if the listing ever completed.
    api.remove_user(&user_id(5));
    // The first page answers, then every list request 503 until the retry budget is spent
    // (single reads still answer: a deletion would be confirmed, if the run tried one).
    api.fail_lists_after(Some(1));
    let summary = run(&cfg).await;
    assert!(!summary.completed);
    let users = kind(&summary, Kind::Users);
    assert!(!users.listing_complete);
    assert_eq!(users.deleted, 0);
    assert_eq!(summary.kinds.len(), 1, "the run stops at the failing kind");
    assert!(
        summary
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("did not answer"),
        "{:?}",
        summary.error
    );
    assert!(s.user(&user_id(5)).await.is_some(), "nothing deleted");
    assert_eq!(kind(&summary, Kind::Users).listed, 500);

    // Both runs are listed for the operators by both services, newest first.
    for owner in [Owner::Identity, Owner::Workspace] {
        let req = s.issuers.operator(
            owner.audience(),
            vbase_proto::ops::v1::ListReconcileRunsRequest { page_size: 0 },
        );
        let runs = s
            .admin(owner)
            .await
            .list_reconcile_runs(req)
            .await
            .unwrap()
            .into_inner()
            .runs;
        assert_eq!(runs.len(), 2, "{owner:?}");
        assert_eq!(runs[0].run_id, summary.run_id);
        assert!(!runs[0].completed && runs[0].error.contains("did not answer"));
        assert!(runs[1].completed && runs[1].error.is_empty());
        let listed: serde_json::Value = serde_json::from_str(&runs[0].summary_json).unwrap();
        assert_eq!(listed["kinds"][0]["listed"], 500);
    }
}

#[tokio::test]
async fn retry_after_is_honoured_and_the_rate_is_never_exceeded() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 1100, 2, 3);
    let mut cfg = config(&s, &api);
    cfg.clerk.clerk_api_page_size = 100;
    cfg.clerk.clerk_api_max_requests = 5;
    api.rate_limit_next(2, 1);
    let started = Instant::now();
    let summary = run(&cfg).await;
    let took = started.elapsed();
    assert!(summary.completed, "{}", summary.table());
    assert_eq!(kind(&summary, Kind::Users).created, 1100);
    assert!(
        took >= Duration::from_secs(2),
        "two 429s with Retry-After: 1 were waited out, took {took:?}"
    );
    // 12 user pages + 1 org page + 1 membership page + 2 refused: at 5 per second.
    assert!(api.requests() >= 16, "{}", api.requests());
    // The gateway spaces its requests by when it starts them; the stand-in sees them arrive
    // after a latency that varies on a loaded machine. A window 300 ms short of the second
    // leaves that much for the variation; a limiter that lets a burst through still fails.
    let peak = api.peak_requests_in(Duration::from_millis(700));
    assert!(
        peak <= 5,
        "at most 5 requests started in any second, saw {peak} arrive within 700 ms"
    );
}

#[tokio::test]
async fn a_wrong_key_stops_at_once_and_scoped_runs_touch_only_their_resource() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 10, 2, 3);
    let mut cfg = config(&s, &api);
    cfg.clerk.clerk_secret_key = "sk_test_wrong_key".into();
    let refused = run(&cfg).await;
    assert!(!refused.completed);
    assert!(
        refused
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("CLERK_SECRET_KEY"),
        "{:?}",
        refused.error
    );
    assert_eq!(api.requests(), 1, "401 is not retried");

    let mut one = config(&s, &api);
    one.user = Some(user_id(4));
    let summary = run(&one).await;
    assert!(summary.completed, "{}", summary.table());
    assert_eq!(
        summary
            .kinds
            .iter()
            .map(|k| k.kind.as_str())
            .collect::<Vec<_>>(),
        ["users", "memberships"]
    );
    assert_eq!(kind(&summary, Kind::Users).created, 1);
    assert!(s.user(&user_id(4)).await.is_some());
    assert!(s.user(&user_id(5)).await.is_none(), "other users untouched");

    let mut org = config(&s, &api);
    org.org = Some(org_id(1));
    let summary = run(&org).await;
    assert!(summary.completed, "{}", summary.table());
    assert_eq!(kind(&summary, Kind::Organizations).created, 1);
    assert_eq!(s.members(&org_id(1)).await.len(), 3);
    assert!(
        !s.workspace_exists(&org_id(0)).await,
        "other organizations untouched"
    );
}

/// A run for one organization that Clerk deleted removes its workspace and memberships (whose
/// listing Clerk answers 404 for a deleted organization); one for a deleted user removes them
/// and their memberships. Nothing else is touched.
#[tokio::test]
async fn scoped_runs_remove_what_clerk_deleted() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 10, 2, 3);
    assert!(run(&config(&s, &api)).await.completed);
    api.remove_org(&org_id(0));
    let mut org = config(&s, &api);
    org.org = Some(org_id(0));
    let summary = run(&org).await;
    assert!(summary.completed, "{}", summary.table());
    assert_eq!(kind(&summary, Kind::Memberships).deleted, 3);
    assert_eq!(kind(&summary, Kind::Organizations).deleted, 1);
    assert!(!s.workspace_exists(&org_id(0)).await);
    assert_eq!(s.members(&org_id(1)).await.len(), 3, "others untouched");
    // A user Clerk deleted, with their membership (as Clerk does).
    // Organization 1's members are users 7, 8 and 9.
    api.remove_user(&user_id(8));
    api.remove_membership("orgmem_1x8");
    let mut user = config(&s, &api);
    user.user = Some(user_id(8));
    let summary = run(&user).await;
    assert!(summary.completed, "{}", summary.table());
    assert_eq!(kind(&summary, Kind::Users).deleted, 1);
    assert_eq!(s.members(&org_id(1)).await.len(), 2);
    assert!(s.user(&user_id(7)).await.is_some(), "others untouched");
}

/// The reconcile methods answer the gateway's subject only.
#[tokio::test]
async fn only_the_gateway_may_call_the_reconcile_methods() {
    let s = stack(SECRET).await;
    // Another subject, with a key of its own (each service key signs its own subject only).
    let other = s
        .issuers
        .keys
        .token_as(service_harness::OPERATOR, "identity-service");
    let req = service_harness::bearer(
        idp::FinishReconcileRequest {
            run_id: uuid::Uuid::nil().to_string(),
            ..Default::default()
        },
        &other,
    );
    let e = s.identity().await.finish_reconcile(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("webhook-gateway"), "{e:?}");
    let gateway = token_auth::signing::ServiceTokenMinter::new(
        token_auth::signing::SigningKey::from_pem(
            &std::fs::read_to_string(
                s.issuers
                    .keys
                    .signing_key_file_of(token_auth::GATEWAY_SUBJECT),
            )
            .unwrap(),
        )
        .unwrap(),
        "vbase-internal",
        "webhook-gateway",
        Duration::from_secs(60),
    );
    let ok = s
        .identity()
        .await
        .finish_reconcile(service_harness::bearer(
            idp::FinishReconcileRequest {
                run_id: uuid::Uuid::nil().to_string(),
                ..Default::default()
            },
            &gateway.token_for("identity-service").unwrap(),
        ))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    // Nor may the tests' own internal caller, granted every other method.
    let internal = s
        .identity()
        .await
        .finish_reconcile(s.issuers.service(
            "identity-service",
            idp::FinishReconcileRequest {
                run_id: uuid::Uuid::nil().to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(internal.code(), tonic::Code::PermissionDenied);
}

/// Workspaces synced before Clerk's `created_at` was kept, and memberships from before they
/// carried ids, have no place in the listing order: a run gives the listed ones theirs (no
/// write of their data, no false candidate), and deletes those Clerk no longer has.
#[tokio::test]
async fn rows_without_a_place_in_the_order_are_placed_or_deleted() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 20, 6, 3);
    let cfg = config(&s, &api);
    assert!(run(&cfg).await.completed);
    service_harness::execute(
        s.workspace_db(),
        "UPDATE workspaces SET clerk_created_at = '-infinity';
         UPDATE memberships SET clerk_membership_id = '', membership_created_at = '-infinity'",
    )
    .await;
    api.remove_org(&org_id(4));
    for k in 0..3 {
        api.remove_membership(&format!("orgmem_4x{}", (4 * 7 + k) % 20));
    }
    api.remove_membership(&format!("orgmem_0x{}", 1));
    let mut dry = cfg.clone();
    dry.dry_run = true;
    let planned = run(&dry).await;
    let applied = run(&cfg).await;
    assert!(applied.completed, "{}", applied.table());
    for r in [&planned, &applied] {
        assert_eq!(
            (
                kind(r, Kind::Organizations).missing,
                kind(r, Kind::Organizations).deleted
            ),
            (1, 1),
            "{}",
            r.table()
        );
        // org 4's three memberships and the one removed from org 0; the others are placed
        // without a write.
        let m = kind(r, Kind::Memberships);
        assert_eq!(
            (m.missing, m.deleted, m.updated),
            (4, 4, 0),
            "{}",
            r.table()
        );
    }
    assert!(!s.workspace_exists(&org_id(4)).await);
    assert!(s.workspace_exists(&org_id(5)).await);
    assert_eq!(s.members(&org_id(0)).await.len(), 2);
    assert_eq!(
        service_harness::scalar(
            s.workspace_db(),
            "SELECT count(*) FROM workspaces WHERE deleted_at IS NULL AND clerk_created_at = '-infinity'"
        )
        .await,
        0,
        "every listed workspace has its place"
    );
    let again = run(&cfg).await;
    for k in [Kind::Organizations, Kind::Memberships] {
        let x = kind(&again, k);
        assert_eq!(
            (x.missing, x.updated, x.deleted),
            (0, 0, 0),
            "{}",
            again.table()
        );
    }
}
