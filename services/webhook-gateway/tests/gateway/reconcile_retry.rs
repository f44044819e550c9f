//! Reconcile's calls to the services when a service fails: a real identity-service stopped
//! part way through a run and started again on its address is ridden over (every item applied
//! once, the repeats counted); a write whose answer is lost to its deadline is repeated and
//! counted once; a refusal by a real service is not repeated; an outage longer than the
//! attempts stops the run saying so.

use crate::reconcile::{C, KEY, config, counts, kind, run, seed, user_id};
use crate::support::*;
use service_harness::{RunningServer, eventually, scalar};
use stand_ins::{ClerkApiStandIn, user_json};
use std::time::{Duration, Instant};
use webhook_gateway::reconcile::config::{Kind, ServiceRetryArgs};

/// Repeats quick enough for a test, patient enough for a restart of a second or two.
fn patient() -> ServiceRetryArgs {
    ServiceRetryArgs {
        reconcile_service_attempts: 12,
        reconcile_service_retry_base_ms: 100,
        reconcile_service_retry_max_ms: 1000,
        reconcile_service_retry_budget_secs: 60,
    }
}

#[tokio::test]
async fn a_service_restarting_during_a_run_is_ridden_over_and_every_item_applied_once() {
    let logs = captured_logs();
    let mut s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 1000, 5, 3);
    // Ten pages of users, each answered after 150 ms: the users' listing takes 1.5 s at least.
    api.set_latency(Duration::from_millis(150));
    let mut cfg = config(&s, &api);
    cfg.clerk.clerk_api_page_size = 100;
    cfg.service_retry = patient();
    // Once the first users are written, identity-service stops (draining what is in flight),
    // stays away for a second, and starts again on the same address. (The run is not a task of
    // its own: its future is not `Send` for every lifetime, so both go side by side here.)
    let identity_db = s._dbs.0.url().to_owned();
    let outage = async {
        eventually("the run's first users", Duration::from_secs(60), || async {
            scalar(&identity_db, "SELECT count(*) FROM users").await > 0
        })
        .await;
        let addr = s.identity.as_ref().unwrap().addr;
        s.identity.take().unwrap().stop().await.unwrap();
        let stopped_at = Instant::now();
        let held_while_down = scalar(&identity_db, "SELECT count(*) FROM users").await;
        assert!(
            held_while_down < 1000,
            "the run wrote every user before the service stopped: the test proves nothing"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ic = s.identity_cfg.clone();
        s.identity =
            Some(RunningServer::start_on(addr, |l, sd| identity_service::run(ic, l, sd)).await);
        eprintln!(
            "identity-service away for {:?}, {held_while_down} users held then",
            stopped_at.elapsed()
        );
    };
    let (summary, ()) = tokio::join!(run(&cfg), outage);
    eprintln!("{}", summary.table());
    assert!(summary.completed, "{}", summary.table());
    assert_eq!(counts(&summary, Kind::Users), (1000, 0, 0, 0, 0));
    assert_eq!(counts(&summary, Kind::Organizations), (5, 0, 0, 0, 0));
    assert_eq!(counts(&summary, Kind::Memberships), (15, 0, 0, 0, 0));
    assert_eq!(kind(&summary, Kind::Users).refused, 0);
    let users_retries = kind(&summary, Kind::Users).service_retries;
    assert!(users_retries > 0, "{}", summary.table());
    assert!(summary.service_retries >= users_retries);
    assert!(summary.table().contains("service calls repeated"));

    // Each repeat logged at WARN, naming the call, never a resource (ids, names, emails).
    let text = logs.text();
    let repeats: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("a service call failed for a moment"))
        .collect();
    assert!(
        repeats.len() as u64 >= users_retries,
        "{} lines",
        repeats.len()
    );
    eprintln!("{}", repeats[0]);
    for line in &repeats {
        assert!(line.contains("\"level\":\"WARN\""), "{line}");
        for personal in ["user_r", "example.org", "Example", "org_r"] {
            assert!(!line.contains(personal), "{personal} in {line}");
        }
    }

    // Every user once, written by this run's own event id, each id recorded once.
    let run_id = &summary.run_id;
    assert_eq!(
        scalar(&identity_db, "SELECT count(*) FROM users").await,
        1000
    );
    let by_this_run = format!(
        "SELECT count(*) FROM users
          WHERE source_event_id = 'reconcile-{run_id}-user-' || clerk_id"
    );
    assert_eq!(scalar(&identity_db, &by_this_run).await, 1000);
    let events =
        format!("SELECT count(*) FROM processed_events WHERE event_id LIKE 'reconcile-{run_id}-%'");
    assert_eq!(scalar(&identity_db, &events).await, 1000);

    // The run's record, with its repeats, reached both services (after the restart).
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
        assert_eq!(runs[0].run_id, *run_id, "{owner:?}");
        let recorded: serde_json::Value = serde_json::from_str(&runs[0].summary_json).unwrap();
        assert_eq!(recorded["service_retries"], summary.service_retries);
    }

    // Nothing left to do: no item was lost or doubled.
    api.set_latency(Duration::ZERO);
    let again = run(&cfg).await;
    assert!(again.completed, "{}", again.table());
    assert_eq!(counts(&again, Kind::Users), (0, 0, 1000, 0, 0));
    assert_eq!(counts(&again, Kind::Organizations), (0, 0, 5, 0, 0));
    assert_eq!(counts(&again, Kind::Memberships), (0, 0, 15, 0, 0));
    assert_eq!(again.service_retries, 0);
}

/// A write that outlives its deadline (its user's row locked by another transaction for
/// longer than DOWNSTREAM_TIMEOUT_SECS) is repeated; the first attempt commits once the lock
/// goes and its answer is lost, so the repeat answers DUPLICATE: counted as the one update it
/// is, not as stale, and applied once.
#[tokio::test]
async fn a_write_whose_answer_was_lost_is_repeated_and_counted_once() {
    let s = stack(SECRET).await;
    let id = user_id(0);
    // Held here older than Clerk has it: the run updates it.
    let (code, _) = s
        .send("msg_old", &user_event("user.created", &id, "Old", C - 1000))
        .await;
    assert_eq!(code, 200);
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    api.put_user(user_json(&id, "New", "new@example.org", C, C));
    let mut cfg = config(&s, &api);
    cfg.only = vec![Kind::Users];
    cfg.service_retry = patient();
    assert_eq!(s.downstream.downstream_timeout_secs, 3);

    // Another transaction holds the user's row for 5 s, longer than the 3 s deadline.
    let identity_db = s._dbs.0.url().to_owned();
    let mut holder = tokio::process::Command::new("psql")
        .arg(&identity_db)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", "BEGIN"])
        .args([
            "-c",
            &format!("SELECT 1 FROM users WHERE clerk_id = '{id}' FOR UPDATE"),
        ])
        .args(["-c", "SELECT pg_sleep(5)", "-c", "COMMIT"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    let sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)'";
    eventually("the row locked", Duration::from_secs(10), || async {
        scalar(&identity_db, sleeping).await == 1
    })
    .await;

    let summary = run(&cfg).await;
    eprintln!("{}", summary.table());
    assert!(holder.wait().await.unwrap().success());
    assert!(summary.completed, "{}", summary.table());
    assert_eq!(counts(&summary, Kind::Users), (0, 1, 0, 0, 0));
    assert!(summary.service_retries >= 1, "{}", summary.table());
    assert!(
        summary.duration_secs >= 3.0,
        "the write waited for the lock"
    );
    assert_eq!(s.user(&id).await.unwrap().name, "New Example");
    let run_id = &summary.run_id;
    let events =
        format!("SELECT count(*) FROM processed_events WHERE event_id LIKE 'reconcile-{run_id}-%'");
    assert_eq!(scalar(&identity_db, &events).await, 1);
}

/// PERMISSION_DENIED (here: a token of a subject the services do not let call the gateway's
/// methods) is the service's decision: the run stops at its first call, without a repeat, even
/// with repeats allowed.
#[tokio::test]
async fn a_refusal_is_not_repeated() {
    let dir = std::env::temp_dir().join(format!("gw-retry-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "not-a-token-yet").unwrap();
    let s = stack_with(SECRET, Some(file.clone()), None, None).await;
    std::fs::write(
        &file,
        s.issuers
            .keys
            .token_as(service_harness::OPERATOR, "identity-service"),
    )
    .unwrap();
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 10, 1, 2);
    let mut cfg = config(&s, &api);
    // A repeat would wait a second at least.
    cfg.service_retry = ServiceRetryArgs {
        reconcile_service_retry_base_ms: 2000,
        reconcile_service_retry_max_ms: 2000,
        ..patient()
    };
    let started = Instant::now();
    let summary = run(&cfg).await;
    let took = started.elapsed();
    assert!(!summary.completed);
    let error = summary.error.clone().unwrap_or_default();
    assert!(error.contains("PermissionDenied"), "{error}");
    assert_eq!(summary.service_retries, 0, "{}", summary.table());
    assert!(took < Duration::from_millis(900), "took {took:?}");
    assert_eq!(
        scalar(s._dbs.0.url(), "SELECT count(*) FROM users").await,
        0,
        "nothing written"
    );
}

/// A service away for longer than the attempts allow stops the run, saying how long it tried.
#[tokio::test]
async fn an_outage_longer_than_the_attempts_stops_the_run() {
    let mut s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 10, 1, 2);
    s.identity.take().unwrap().stop().await.unwrap();
    let mut cfg = config(&s, &api);
    cfg.service_retry = ServiceRetryArgs {
        reconcile_service_attempts: 3,
        reconcile_service_retry_base_ms: 50,
        reconcile_service_retry_max_ms: 100,
        reconcile_service_retry_budget_secs: 30,
    };
    let summary = run(&cfg).await;
    assert!(!summary.completed);
    let error = summary.error.clone().unwrap_or_default();
    assert!(
        error.contains("gave up after 3 attempts") && error.contains("Unavailable"),
        "{error}"
    );
    // The Clerk instance check's first call, twice repeated.
    assert_eq!(summary.service_retries, 2, "{}", summary.table());
}
