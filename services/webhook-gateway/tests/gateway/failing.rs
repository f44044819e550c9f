//! A delivery a service fails for a reason of its own (here a trigger that raises: INTERNAL) is
//! answered 503 while its Clerk event is young, so Svix retries it, and is quarantined once the
//! event is `QUARANTINE_FAILED_AFTER_SECS` old, before Svix gives up on it; an outage or a
//! refused token stays 503 however old the event.

use crate::support::*;
use clap::Parser;
use serde_json::{Value, json};
use service_harness::EntityLock;
use vbase_proto::ops::v1 as ops;
use webhook_gateway::quarantine::{ReplaySummary, replay};

const HOUR_MS: i64 = 3_600_000;

/// The event's `timestamp` (and the resource's `updated_at`) `ms` before now.
fn aged(mut event: Value, ms: i64) -> Value {
    let at = now() * 1000 - ms;
    event["timestamp"] = json!(at);
    event["data"]["updated_at"] = json!(at);
    event
}

/// Makes every write of `id` to `table` (keyed by `column`) fail in `db` (INTERNAL at the
/// service) until [`allow`].
async fn refuse(db: &str, table: &str, column: &str, id: &str) {
    service_harness::execute(
        db,
        &format!(
            "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 IF NEW.{column} = '{id}' THEN RAISE EXCEPTION 'refused by the test'; END IF;
                 RETURN NEW;
               END $$;
             CREATE TRIGGER refuse_{table} BEFORE INSERT OR UPDATE ON {table}
               FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
        ),
    )
    .await;
}

/// The cause fixed: writes to `table` succeed again.
async fn allow(db: &str, table: &str) {
    service_harness::execute(
        db,
        &format!("DROP TRIGGER refuse_{table} ON {table}; DROP FUNCTION refuse_{table}();"),
    )
    .await;
}

const FAILED: (u16, &str) = (503, "a service failed this delivery, retry later\n");

fn answer(r: &(u16, String)) -> (u16, &str) {
    (r.0, r.1.as_str())
}

/// The count of `outcome` for `event_type` in the gateway's metrics (0 when absent).
async fn counted(s: &Stack, event_type: &str, outcome: &str) -> f64 {
    let series =
        format!(r#"webhook_requests_total{{event_type="{event_type}",outcome="{outcome}"}} "#);
    s.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0.0)
}

/// Before any delivery, every applied type's `failed` series is exported at 0, so the first
/// failure of a type is an increase the alert sees (a series born at 1 shows none).
#[tokio::test]
async fn failures_are_counted_from_zero_for_every_applied_type() {
    let s = stack(SECRET).await;
    let metrics = s.metrics().await;
    for kind in webhook_gateway::clerk::HANDLED_EVENT_TYPES {
        let zero = format!(r#"webhook_requests_total{{event_type="{kind}",outcome="failed"}} 0"#);
        assert!(metrics.lines().any(|l| l == zero), "{zero} in {metrics}");
    }
    // And every reason of a refusal by verification (VBaseWebhookSignatureFailures).
    for reason in webhook_gateway::verify::Rejection::LABELS {
        let zero = format!(r#"webhook_verification_failures_total{{reason="{reason}"}} 0"#);
        assert!(metrics.lines().any(|l| l == zero), "{zero} in {metrics}");
    }
}

#[tokio::test]
async fn a_young_delivery_failing_at_a_service_is_answered_503_and_nothing_is_kept() {
    let s = stack(SECRET).await;
    refuse(s._dbs.0.url(), "users", "clerk_id", "user_pf1").await;
    let event = user_event("user.created", "user_pf1", "Young", T);
    // Just now; just under the default 12 h; half a day ahead of the gateway's clock (the
    // services refuse a time more than a day ahead).
    let young = [
        ("msg_pf1_now", aged(event.clone(), 0)),
        ("msg_pf1_11h59", aged(event.clone(), 12 * HOUR_MS - 60_000)),
        ("msg_pf1_future", aged(event.clone(), -12 * HOUR_MS)),
    ];
    for (id, body) in &young {
        assert_eq!(answer(&s.send(id, body).await), FAILED, "{id}");
    }
    assert!(s.quarantined(Owner::Identity).await.is_empty());
    assert!(s.quarantined(Owner::Workspace).await.is_empty());
    assert!(s.user("user_pf1").await.is_none());
    // Counted apart from an outage, and still a 503 (VBaseWebhook5xx counts both).
    assert_eq!(counted(&s, "user.created", "failed").await, 3.0);
    assert_eq!(counted(&s, "user.created", "unavailable").await, 0.0);

    // A fix released within the hours Svix retries: its next attempt applies the delivery.
    allow(s._dbs.0.url(), "users").await;
    let (id, body) = &young[0];
    assert_eq!(
        s.send(id, body).await,
        (200, r#"{"outcome":"applied"}"#.to_owned())
    );
    assert_eq!(s.user("user_pf1").await.unwrap().name, "Young Example");
}

/// An event without a timestamp has no age to wait for: kept at its first failure, since Svix
/// could give up on it before anyone saw it.
#[tokio::test]
async fn a_delivery_without_a_timestamp_failing_at_a_service_is_kept_at_once() {
    let s = stack(SECRET).await;
    refuse(s._dbs.0.url(), "users", "clerk_id", "user_pf5").await;
    let mut untimed = user_event("user.created", "user_pf5", "Untimed", T);
    untimed.as_object_mut().unwrap().remove("timestamp");
    assert_eq!(
        s.send("msg_pf5", &untimed).await,
        (200, r#"{"outcome":"quarantined"}"#.to_owned())
    );
    let kept = s.quarantined_one(Owner::Identity, "msg_pf5").await;
    assert!(
        kept.reason
            .starts_with("failed permanently at a service (the event carries no timestamp"),
        "{}",
        kept.reason
    );
    assert_eq!(counted(&s, "user.created", "failed").await, 0.0);
}

#[tokio::test]
async fn an_old_delivery_failing_at_a_service_is_quarantined_and_a_replay_applies_it_once_fixed() {
    let s = stack(SECRET).await;
    refuse(s._dbs.0.url(), "users", "clerk_id", "user_pf2").await;
    refuse(s.workspace_db(), "workspaces", "clerk_org_id", "org_pf2").await;
    // Svix's 7th attempt comes about 17 h 35 min after the event.
    let user = aged(
        user_event("user.updated", "user_pf2", "Old", T),
        17 * HOUR_MS + 35 * 60_000,
    );
    let sent = serde_json::to_vec(&user).unwrap();
    assert_eq!(
        s.send("msg_pf2", &user).await,
        (200, r#"{"outcome":"quarantined"}"#.to_owned())
    );
    // An organization's, with its timestamp in seconds (as the specification's examples): kept
    // by workspace-service.
    let mut org = org_event("organization.created", "org_pf2", "Old Org", T);
    org["timestamp"] = json!(now() - 2 * 24 * 3600);
    assert_eq!(
        s.send("msg_pf2_org", &org).await,
        (200, r#"{"outcome":"quarantined"}"#.to_owned())
    );
    assert_eq!(s.quarantined(Owner::Identity).await, ["msg_pf2"]);
    assert_eq!(s.quarantined(Owner::Workspace).await, ["msg_pf2_org"]);
    let kept = s.quarantined_one(Owner::Identity, "msg_pf2").await;
    assert_eq!(kept.body, sent, "the raw body is kept as signed");
    assert!(
        kept.reason.starts_with(
            "failed permanently at a service (the event is 17 h 35 min old): upsert_user"
        ),
        "{}",
        kept.reason
    );
    let kept_org = s.quarantined_one(Owner::Workspace, "msg_pf2_org").await;
    assert!(
        kept_org.reason.contains("(the event is 2 d 0 h old)"),
        "{}",
        kept_org.reason
    );
    assert_eq!(counted(&s, "user.updated", "quarantined").await, 1.0);
    assert_eq!(counted(&s, "user.updated", "failed").await, 0.0);

    // The cause fixed, the operator replays: both applied, and Svix's 8th attempt is a
    // duplicate.
    allow(s._dbs.0.url(), "users").await;
    allow(s.workspace_db(), "workspaces").await;
    let summary = replay(&s.gateway_downstream(), None).await;
    assert_eq!(
        summary,
        ReplaySummary {
            examined: 2,
            applied: 2,
            ..ReplaySummary::default()
        }
    );
    assert_eq!(s.user("user_pf2").await.unwrap().name, "Old Example");
    assert_eq!(
        s.workspace_name("org_pf2").await.as_deref(),
        Some("Old Org")
    );
    assert!(s.quarantined(Owner::Identity).await.is_empty());
    let resolved = s
        .quarantined_in(Owner::Identity, ops::QuarantineState::Resolved)
        .await;
    assert_eq!(resolved[0].resolution, "replayed: applied");
    assert_eq!(
        s.send("msg_pf2", &user).await,
        (200, r#"{"outcome":"duplicate"}"#.to_owned())
    );
}

#[tokio::test]
async fn quarantine_failed_after_secs_sets_the_age() {
    let s = stack_tuned(SECRET, None, None, None, |c| {
        c.quarantine_failed_after_secs = 3600;
    })
    .await;
    refuse(s._dbs.0.url(), "users", "clerk_id", "user_pf3").await;
    let event = user_event("user.created", "user_pf3", "P", T);
    let (young, old) = (
        aged(event.clone(), HOUR_MS - 60_000),
        aged(event, HOUR_MS + 60_000),
    );
    assert_eq!(answer(&s.send("msg_pf3_young", &young).await), FAILED);
    assert_eq!(
        s.send("msg_pf3_old", &old).await,
        (200, r#"{"outcome":"quarantined"}"#.to_owned())
    );
    assert_eq!(s.quarantined(Owner::Identity).await, ["msg_pf3_old"]);
}

/// workspace-service refuses the gateway's token (it names identity-service only): a
/// `user.deleted` of November 2023 (`T`) is applied at identity-service, refused at
/// workspace-service, and answered 503, not quarantined at identity-service (which would take
/// it).
#[tokio::test]
async fn a_refused_token_stays_503_however_old_the_event() {
    let dir = std::env::temp_dir().join(format!("gw-failing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "not-a-token-yet").unwrap();
    let s = stack_with(SECRET, Some(file.clone()), None, None).await;
    std::thread::sleep(std::time::Duration::from_millis(20)); // a distinct modification time
    std::fs::write(
        &file,
        s.issuers
            .keys
            .token_as(token_auth::GATEWAY_SUBJECT, "identity-service"),
    )
    .unwrap();
    let deleted = deleted_event("user.deleted", "user", "user_pd", T);
    let (code, _) = s.send("msg_pd", &deleted).await;
    assert_eq!(code, 503);
    assert!(s.quarantined(Owner::Identity).await.is_empty());
    assert_eq!(counted(&s, "user.deleted", "unavailable").await, 1.0);
    let _ = std::fs::remove_dir_all(dir);
}

/// A service past the deadline (it waits behind a concurrent writer) for an event of November
/// 2023 (`T`): 503, not quarantined at workspace-service (which answers).
#[tokio::test]
async fn an_unavailable_service_stays_503_however_old_the_event() {
    let s = stack(SECRET).await;
    let created = org_event("organization.created", "org_pu", "U", T);
    assert_eq!(s.send("msg_pu_c", &created).await.0, 200);
    let writer = EntityLock::hold(s.workspace_db(), "org:org_pu").await;
    let renamed = org_event("organization.updated", "org_pu", "Renamed", T + 10);
    assert_eq!(s.send("msg_pu_u", &renamed).await.0, 503);
    drop(writer);
    assert!(s.quarantined(Owner::Workspace).await.is_empty());
    assert_eq!(
        counted(&s, "organization.updated", "unavailable").await,
        1.0
    );
}

/// A service slow to fail an old delivery, then slow to keep it: the answer still goes out
/// before Svix's 15 s timeout (503: Svix retries), not after both calls' deadlines.
#[tokio::test]
async fn a_slow_failure_then_a_slow_quarantine_is_answered_within_svixs_timeout() {
    let s = stack_tuned(SECRET, None, None, None, |c| {
        c.downstream.downstream_timeout_secs = 12;
    })
    .await;
    refuse(s.workspace_db(), "workspaces", "clerk_org_id", "org_ps").await;
    // The quarantine table held: keeping the delivery waits until released.
    let keeper = EntityLock::table(s.workspace_db(), "quarantined_deliveries").await;
    // The organization's writer held for 9 s: the command fails only then.
    let writer = EntityLock::hold(s.workspace_db(), "org:org_ps").await;
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(9)).await;
        drop(writer);
    });
    let old = org_event("organization.created", "org_ps", "Slow", T);
    let started = std::time::Instant::now();
    let (code, _) = s.send("msg_ps", &old).await;
    let took = started.elapsed();
    drop(keeper);
    assert_eq!(code, 503);
    assert!(
        took >= std::time::Duration::from_secs(9) && took < std::time::Duration::from_secs(15),
        "answered after {took:?}"
    );
}

#[test]
fn quarantine_failed_after_secs_out_of_range_is_refused_naming_it() {
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        config: webhook_gateway::Config,
    }
    let check = |value: Option<&str>| {
        let mut args = vec!["webhook-gateway", "--clerk-webhook-secret", SECRET];
        args.extend(
            value
                .map(|v| ["--quarantine-failed-after-secs", v])
                .into_iter()
                .flatten(),
        );
        let serve = Serve::try_parse_from(args).unwrap();
        (
            serve.config.quarantine_failed_after_secs,
            serve.config.check(),
        )
    };
    assert_eq!(check(None), (43_200, Ok(())), "the default: 12 h");
    assert_eq!(check(Some("1")).1, Ok(()));
    assert_eq!(check(Some("72000")).1, Ok(()));
    // Svix's last attempt comes 22 h 4 min after the first at the earliest (its jitter).
    for refused in ["0", "72001", "86400"] {
        let Err(why) = check(Some(refused)).1 else {
            panic!("{refused} accepted")
        };
        assert!(
            why.starts_with(&format!(
                "QUARANTINE_FAILED_AFTER_SECS ({refused}) must be from 1 to 72000"
            )),
            "{why}"
        );
    }
}
