//! What operators rely on, across the real binaries: the operators' token tool (`vbase-token
//! mint`, with a key the gateway does not hold) and the gateway's `replay-quarantined` repair
//! a refused delivery, and the gateway's key signs no other subject; SIGTERM lets the calls and
//! webhooks in flight finish and every process exits 0; the metrics in `deploy/README.md` exist
//! and move as documented; and no log line holds a token, a webhook body or an email.

use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use token_auth::signing::SigningKey;
use tonic::Code;
use vbase_proto::identity::v1 as idp;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;
use vbase_proto::ops::v1 as ops;
use vbase_proto::ops::v1::delivery_admin_service_client::DeliveryAdminServiceClient;
use vbase_proto::ops::v1::delivery_intake_service_client::DeliveryIntakeServiceClient;
use vbase_stack::{Stack, StackConfig, Which, dev_user_claims, sign_webhook};

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf()
}

fn state_dir() -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "vbase-ops-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&p).unwrap();
    p
}

async fn stack(dir: &std::path::Path) -> Stack {
    let mut cfg = StackConfig::dev(bin_dir(), dir.to_path_buf());
    cfg.extra_env.insert(
        "workspace-service",
        vec![
            ("LIVEBLOCKS_BACKOFF_BASE_MS".into(), "50".into()),
            ("LIVEBLOCKS_POLL_MS".into(), "50".into()),
        ],
    );
    Stack::start(cfg).await.expect("stack starts")
}

/// A distinctive address: it must never reach a log line.
const EMAIL: &str = "grace.hopper.private@example.org";

fn user_event(kind: &str, id: &str, email: &str, updated_ms: i64) -> Value {
    json!({"data": {"id": id, "object": "user", "first_name": "Grace", "last_name": "Hopper", "username": null,
                    "primary_email_address_id": "idn_p", "image_url": "https://img.clerk.com/body-marker-7f3a",
                    "email_addresses": [{"id": "idn_p", "email_address": email}],
                    "created_at": 1_700_000_000_000_i64, "updated_at": updated_ms},
           "object": "event", "type": kind, "timestamp": updated_ms})
}

async fn post(stack: &Stack, id: &str, body: &Value) -> (u16, String) {
    let bytes = body.to_string().into_bytes();
    let mut req = reqwest::Client::new()
        .post(format!("{}/clerk", stack.state.gateway_url))
        .body(bytes.clone());
    for (k, v) in sign_webhook(&stack.state.webhook_secret, id, &bytes).unwrap() {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Runs a gateway command off the runtime (the stand-ins answer on it): (status, stdout, stderr).
async fn run(mut c: std::process::Command) -> (Option<i32>, String, String) {
    let out = tokio::task::spawn_blocking(move || c.output().expect("the command runs"))
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `vbase-token mint` with `key` (a private key file), as an operator runs it.
async fn mint(stack: &Stack, key: &std::path::Path, subject: &str, audience: &str) -> String {
    let mut c = stack.token_command();
    c.arg("mint").arg("--key-file").arg(key);
    c.args(["--subject", subject, "--audience", audience, "--ttl", "5m"]);
    let (code, out, err) = run(c).await;
    assert_eq!(code, Some(0), "{err}");
    out.trim().to_owned()
}

async fn metrics(stack: &Stack, w: Which) -> String {
    let url = match w {
        Which::Gateway => format!("{}/metrics", stack.state.gateway_url),
        w => stack.metrics_url(w).unwrap(),
    };
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// The value of `series` (name with labels, as exposed), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_operator_repairs_a_refused_delivery_and_no_log_line_leaks() {
    let dir = state_dir();
    let stack = stack(&dir).await;
    let now_ms = token_auth::signing::now_secs() * 1000;
    let before = metrics(&stack, Which::Gateway).await;

    // A delivery identity-service refuses (an invalid primary address): kept, answered 200.
    let refused = user_event("user.created", "user_grace", "grace at example", now_ms);
    assert_eq!(
        post(&stack, "msg_refused", &refused).await,
        (200, r#"{"outcome":"quarantined"}"#.to_owned())
    );
    // One applied normally, with the address that must stay out of the logs.
    assert_eq!(
        post(
            &stack,
            "msg_ok",
            &user_event("user.created", "user_ada", EMAIL, now_ms)
        )
        .await
        .0,
        200
    );

    // The operator's token, from the operators' own key (the gateway does not hold it).
    let operator = mint(
        &stack,
        &stack.operator_key_file,
        "operator",
        "identity-service",
    )
    .await;
    let channel = service_harness::connect(stack.identity_addr).await;
    let mut admin = DeliveryAdminServiceClient::new(channel.clone());
    let listed = admin
        .list_quarantined(service_harness::bearer(
            ops::ListQuarantinedRequest::default(),
            &operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(
        listed
            .iter()
            .map(|d| d.svix_id.as_str())
            .collect::<Vec<_>>(),
        ["msg_refused"]
    );
    // The gateway's key signs the gateway's subject only: an operator's token, or any other
    // subject's, made with it is refused; nor does the operators' key sign the gateway's.
    for (key, subject) in [
        (&stack.gateway_key_file, "operator"),
        (&stack.gateway_key_file, "reporting"),
        (&stack.gateway_key_file, vbase_stack::STACK_CALLER),
        (&stack.operator_key_file, token_auth::GATEWAY_SUBJECT),
    ] {
        let forged = mint(&stack, key, subject, "identity-service").await;
        let denied = admin
            .get_sync_status(service_harness::bearer(
                ops::GetSyncStatusRequest {},
                &forged,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            denied.code(),
            Code::Unauthenticated,
            "{subject}: {denied:?}"
        );
        assert!(
            denied.message().contains("subject"),
            "{subject}: {denied:?}"
        );
    }

    // A body the current code accepts, kept by an older gateway: the replay applies it once.
    let gateway = mint(
        &stack,
        &stack.gateway_key_file,
        token_auth::GATEWAY_SUBJECT,
        "identity-service",
    )
    .await;
    DeliveryIntakeServiceClient::new(channel.clone())
        .quarantine_delivery(service_harness::bearer(
            ops::QuarantineDeliveryRequest {
                svix_id: "msg_kept_by_older".into(),
                event_type: "user.created".into(),
                reason: "refused by an older gateway".into(),
                body: user_event("user.created", "user_kept", "kept@example.org", now_ms)
                    .to_string()
                    .into_bytes(),
            },
            &gateway,
        ))
        .await
        .unwrap();
    let mut replay = stack.gateway_command("replay-quarantined");
    replay.args(["--all", "--json"]);
    let (code, out, err) = run(replay).await;
    assert_eq!(code, Some(0), "{err}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            &summary["examined"],
            &summary["applied"],
            &summary["still_refused"]
        ),
        (&json!(2), &json!(1), &json!(1)),
        "{summary}"
    );
    let kept = IdentityServiceClient::new(channel.clone())
        .get_user(service_harness::bearer(
            idp::GetUserRequest {
                clerk_id: "user_kept".into(),
            },
            &mint(
                &stack,
                &stack.service_key_file,
                vbase_stack::STACK_CALLER,
                "identity-service",
            )
            .await,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(kept.email, "kept@example.org");
    let mut again = stack.gateway_command("replay-quarantined");
    again.args(["--id", "msg_kept_by_older"]);
    let (code, _, err) = run(again).await;
    assert_eq!(
        code,
        Some(1),
        "resolved: no open delivery has that id: {err}"
    );
    assert!(err.contains("no open delivery"), "{err}");

    // The operator discards the one nobody can apply.
    let discarded = admin
        .discard_quarantined(service_harness::bearer(
            ops::DiscardQuarantinedRequest {
                svix_id: "msg_refused".into(),
                reason: "the user fixed the address in Clerk".into(),
            },
            &operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(discarded.discarded);

    // The gateway counted the quarantine, identity-service its gauge.
    let after = metrics(&stack, Which::Gateway).await;
    let series = r#"webhook_requests_total{event_type="user.created",outcome="quarantined"}"#;
    assert_eq!(
        value(&after, series) - value(&before, series),
        1.0,
        "{after}"
    );

    // SIGTERM stops every process with status 0.
    let webhook_secret = stack.state.webhook_secret.clone();
    stack.stop().await.unwrap();

    // No log line of any process holds the address, a webhook body, a token or the secret.
    let logs = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(logs.contains("msg_refused"), "the logs were read");
    for (what, secret) in [
        ("an email", EMAIL),
        ("an email", "kept@example.org"),
        ("a webhook body", "body-marker-7f3a"),
        ("the operator's token", operator.as_str()),
        ("the gateway's token", gateway.as_str()),
        ("a token's signature", operator.rsplit('.').next().unwrap()),
        (
            "the webhook secret",
            webhook_secret.trim_start_matches("whsec_"),
        ),
    ] {
        assert!(!logs.contains(secret), "{what} in the logs");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while a user's call and webhooks are in flight (held behind a lock on `users`):
/// identity-service keeps serving them to the end, then exits 0; nothing is lost.
#[tokio::test]
async fn sigterm_lets_the_calls_and_webhooks_in_flight_finish() {
    let dir = state_dir();
    let mut stack = stack(&dir).await;
    let now_ms = token_auth::signing::now_secs() * 1000;
    let (db, conn) = tokio_postgres::connect(&stack.identity_db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.batch_execute("BEGIN; LOCK TABLE users IN EXCLUSIVE MODE")
        .await
        .unwrap();

    let gateway_url = stack.state.gateway_url.clone();
    let secret = stack.state.webhook_secret.clone();
    let webhooks: Vec<_> = (0..6)
        .map(|i| {
            let (url, secret) = (gateway_url.clone(), secret.clone());
            let body = user_event(
                "user.created",
                &format!("user_inflight{i}"),
                "x@example.org",
                now_ms,
            );
            tokio::spawn(async move {
                let bytes = body.to_string().into_bytes();
                let mut req = reqwest::Client::new()
                    .post(format!("{url}/clerk"))
                    .body(bytes.clone());
                for (k, v) in sign_webhook(&secret, &format!("msg_inflight{i}"), &bytes).unwrap() {
                    req = req.header(k, v);
                }
                req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
            })
        })
        .collect();
    let clerk_key = SigningKey::from_pem(
        &std::fs::read_to_string(stack.state.clerk_signing_key_file.as_ref().unwrap()).unwrap(),
    )
    .unwrap();
    let token = clerk_key
        .sign(&dev_user_claims(
            &stack.state,
            "user_caller",
            None,
            "",
            "Caller",
            "caller@example.org",
        ))
        .unwrap();
    let mut identity =
        IdentityServiceClient::new(service_harness::connect(stack.identity_addr).await);
    let call = tokio::spawn(async move {
        identity
            .store_user(service_harness::bearer(idp::StoreUserRequest {}, &token))
            .await
    });
    // Every one is waiting on the lock before the stop begins.
    service_harness::eventually("writes waiting", Duration::from_secs(10), || async {
        db.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            >= 2
    })
    .await;
    let pid = stack.pid(Which::Identity).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(alive, "identity-service waits for its calls in flight");
    // Meanwhile it no longer reports SERVING: the gateway's `/status` says so.
    let ready = reqwest::get(format!("{}/status", stack.state.gateway_url))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let text = ready.text().await.unwrap();
    assert!(text.contains("identity-service: not serving"), "{text}");
    db.batch_execute("COMMIT").await.unwrap();

    let stored = call.await.unwrap().expect("the call in flight completes");
    assert!(stored.into_inner().created);
    let status = stack.terminate(Which::Identity).await.unwrap();
    assert!(status.success(), "identity-service exited with {status}");
    let mut answers = Vec::new();
    for w in webhooks {
        answers.push(w.await.unwrap());
    }
    // Each delivery in flight was applied (200), or answered 503 for Svix to retry: none lost.
    let applied = answers.iter().filter(|c| **c == 200).count() as i64;
    assert!(
        answers.iter().all(|c| *c == 200 || *c == 503),
        "{answers:?}"
    );
    let (db2, conn2) = tokio_postgres::connect(&stack.identity_db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn2);
    let held: i64 = db2
        .query_one(
            "SELECT count(*) FROM users WHERE clerk_id LIKE 'user_inflight%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, applied, "{answers:?}");
    assert!(
        applied >= 1,
        "at least the first batch was in flight: {answers:?}"
    );
    stack.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The metric names of deploy/README.md's table, as exposed (`name_total` and the like).
fn documented_metrics() -> Vec<String> {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/README.md"),
    )
    .unwrap();
    let table = readme
        .split("## Metrics")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut names = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap();
        for quoted in first.split('`').skip(1).step_by(2) {
            names.push(quoted.split('{').next().unwrap().to_owned());
        }
    }
    names
}

/// The family name a series name belongs to (`# TYPE` names the family).
fn family(series: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| series.strip_suffix(s))
        .unwrap_or(series)
}

/// The metrics operators alert on move as documented, and every metric the docs name is
/// exposed (a family with labels shows once it has a series: the test touches each first).
#[tokio::test]
async fn the_documented_metrics_exist_and_move_as_documented() {
    let dir = state_dir();
    let stack = stack(&dir).await;
    let documented = documented_metrics();
    assert!(documented.len() >= 15, "{documented:?}");
    // A refused delivery: the gateway counts it, identity-service's gauge shows it.
    let now_ms = token_auth::signing::now_secs() * 1000;
    let before = metrics(&stack, Which::Identity).await;
    assert_eq!(value(&before, "quarantine_open_deliveries"), 0.0);
    post(
        &stack,
        "msg_m1",
        &user_event("user.created", "user_m1", "not an address", now_ms),
    )
    .await;
    post(
        &stack,
        "msg_m2",
        &user_event("user.created", "user_m2", "m2@example.org", now_ms),
    )
    .await;
    service_harness::eventually("the quarantine gauge", Duration::from_secs(15), || async {
        value(
            &metrics(&stack, Which::Identity).await,
            "quarantine_open_deliveries",
        ) == 1.0
    })
    .await;
    let after = metrics(&stack, Which::Identity).await;
    let applied = r#"identity_commands_total{command="upsert_user",outcome="applied"}"#;
    assert_eq!(
        value(&after, applied) - value(&before, applied),
        1.0,
        "{after}"
    );

    // A room deleted while Liveblocks is down: the queue gauges rise, then fall when it is back.
    let liveblocks = stack.liveblocks.as_ref().unwrap();
    liveblocks.set_mode(stand_ins::LiveblocksMode::Down);
    let org = json!({"data": {"id": "org_m", "object": "organization", "name": "M", "slug": null,
                              "created_at": 1_700_000_000_000_i64, "updated_at": now_ms},
                     "object": "event", "type": "organization.created", "timestamp": now_ms});
    assert_eq!(post(&stack, "msg_org_m", &org).await.0, 200);
    let caller = mint(
        &stack,
        &stack.service_key_file,
        vbase_stack::STACK_CALLER,
        "workspace-service",
    )
    .await;
    let mut ws = vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient::new(
        service_harness::connect(stack.workspace_addr).await,
    );
    use vbase_proto::workspace::v1 as wsp;
    let room = ws
        .create_room(service_harness::bearer(
            wsp::CreateRoomRequest {
                clerk_org_id: "org_m".into(),
                kind: wsp::RoomKind::Conference.into(),
                name: "standup".into(),
                request_id: String::new(),
            },
            &caller,
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    ws.delete_room(service_harness::bearer(
        wsp::DeleteRoomRequest { room_id: room.id },
        &caller,
    ))
    .await
    .unwrap();
    service_harness::eventually("the queue gauges rise", Duration::from_secs(15), || async {
        let m = metrics(&stack, Which::Workspace).await;
        value(&m, "liveblocks_cleanup_queue_depth") == 1.0
            && value(&m, "liveblocks_cleanup_oldest_job_seconds") > 0.0
            && value(
                &m,
                r#"liveblocks_cleanup_deliveries_total{outcome="retry"}"#,
            ) >= 1.0
    })
    .await;
    liveblocks.set_mode(stand_ins::LiveblocksMode::Up);
    service_harness::eventually("the queue drains", Duration::from_secs(20), || async {
        let m = metrics(&stack, Which::Workspace).await;
        value(&m, "liveblocks_cleanup_queue_depth") == 0.0
            && value(
                &m,
                r#"liveblocks_cleanup_deliveries_total{outcome="deleted"}"#,
            ) == 1.0
    })
    .await;

    // One request that fails verification, for its counter; then every documented metric.
    let unsigned = reqwest::Client::new()
        .post(format!("{}/clerk", stack.state.gateway_url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 400);
    let mut exposed = String::new();
    for w in [Which::Gateway, Which::Identity, Which::Workspace] {
        exposed.push_str(&metrics(&stack, w).await);
    }
    for name in &documented {
        assert!(
            exposed.contains(&format!("# TYPE {} ", family(name))),
            "{name} is documented but not exposed"
        );
    }
    stack.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
