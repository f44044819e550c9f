//! Signed webhooks over HTTP into the services: routing, verification, duplicates, outages,
//! deadlines, limits.

use crate::support::*;
use serde_json::{Value, json};
use service_harness::{RunningServer, eventually};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vbase_proto::identity::v1 as idp;
use vbase_proto::workspace::v1 as wsp;

#[tokio::test]
async fn every_routed_event_type_reaches_the_services() {
    let s = stack(SECRET).await;
    assert_eq!(
        s.send("msg_u1", &user_event("user.created", "user_a", "Ada", T))
            .await
            .0,
        200
    );
    let u = s.user("user_a").await.unwrap();
    assert_eq!(
        (u.name.as_str(), u.email.as_str()),
        ("Ada Example", "primary@example.org")
    );
    assert_eq!(
        s.send(
            "msg_u2",
            &user_event("user.updated", "user_a", "Augusta", T + 1000)
        )
        .await
        .0,
        200
    );
    assert_eq!(s.user("user_a").await.unwrap().name, "Augusta Example");

    assert_eq!(
        s.send(
            "msg_o1",
            &org_event("organization.created", "org_a", "Acme", T)
        )
        .await
        .0,
        200
    );
    assert!(s.workspace_exists("org_a").await);
    assert_eq!(
        s.send(
            "msg_o2",
            &org_event("organization.updated", "org_a", "Acme 2", T + 5)
        )
        .await
        .0,
        200
    );
    let mut w = s.workspace().await;
    let ws = w
        .get_workspace(s.issuers.service(
            "workspace-service",
            wsp::GetWorkspaceRequest {
                clerk_org_id: "org_a".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(ws.into_inner().workspace.unwrap().name, "Acme 2");

    assert_eq!(
        s.send(
            "msg_m1",
            &membership_event(
                "organizationMembership.created",
                "org_a",
                "user_a",
                "admin",
                T
            )
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.members("org_a").await,
        vec![("user_a".to_string(), "org:admin".to_string())]
    );
    assert_eq!(
        s.send(
            "msg_m2",
            &membership_event(
                "organizationMembership.updated",
                "org_a",
                "user_a",
                "basic_member",
                T + 10
            )
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.members("org_a").await,
        vec![("user_a".to_string(), "org:member".to_string())]
    );
    assert_eq!(
        s.send(
            "msg_m3",
            &membership_event(
                "organizationMembership.deleted",
                "org_a",
                "user_a",
                "basic_member",
                T + 20
            )
        )
        .await
        .0,
        200
    );
    assert!(s.members("org_a").await.is_empty());

    // Invited again: a new membership.
    s.send(
        "msg_m4",
        &membership_event_of(
            "organizationMembership.created",
            ("orgmem_2", T + 30),
            "org_a",
            "user_a",
            "admin",
            T + 30,
        ),
    )
    .await;
    assert_eq!(s.members("org_a").await.len(), 1);
    assert_eq!(
        s.send(
            "msg_ud",
            &deleted_event("user.deleted", "user", "user_a", T + 40)
        )
        .await
        .0,
        200
    );
    assert!(s.user("user_a").await.is_none());
    assert!(
        s.members("org_a").await.is_empty(),
        "user.deleted also removes memberships"
    );

    assert_eq!(
        s.send(
            "msg_od",
            &deleted_event("organization.deleted", "organization", "org_a", T + 50)
        )
        .await
        .0,
        200
    );
    assert!(!s.workspace_exists("org_a").await);

    // Unhandled types: 2xx (Clerk stops retrying) and counted.
    let (code, body) = s
        .send(
            "msg_s1",
            &json!({"type": "session.created", "object": "event", "data": {"id": "sess_1"}}),
        )
        .await;
    assert_eq!((code, body.as_str()), (200, "{\"outcome\":\"ignored\"}"));
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(
            r#"webhook_requests_total{event_type="session.created",outcome="ignored"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("webhook_downstream_latency_seconds"),
        "{metrics}"
    );
}

#[tokio::test]
async fn duplicate_deliveries_have_one_effect() {
    let s = stack(SECRET).await;
    let body = user_event("user.created", "user_d", "Dup", T);
    assert_eq!(
        s.send("msg_dup", &body).await,
        (200, "{\"outcome\":\"applied\"}".into())
    );
    assert_eq!(
        s.send("msg_dup", &body).await,
        (200, "{\"outcome\":\"duplicate\"}".into())
    );
    // An older event under a new id is stale, also 2xx.
    assert_eq!(
        s.send(
            "msg_old",
            &user_event("user.updated", "user_d", "Old", T - 10)
        )
        .await,
        (200, "{\"outcome\":\"stale\"}".into())
    );
    assert_eq!(s.user("user_d").await.unwrap().name, "Dup Example");
}

#[tokio::test]
async fn verification_failures_are_400_and_forward_nothing() {
    let s = stack(SECRET).await;
    let body = user_event("user.created", "user_v", "V", T);
    assert_eq!(
        s.send_signed(SECRET, "m1", now() - 301, &body).await.0,
        400,
        "stale timestamp"
    );
    assert_eq!(
        s.send_signed(SECRET, "m2", now() + 301, &body).await.0,
        400,
        "future timestamp"
    );
    assert_eq!(
        s.send_signed(NEXT_SECRET, "m3", now(), &body).await.0,
        400,
        "other secret"
    );
    let bytes = body.to_string().into_bytes();
    let sig = svix::webhooks::Webhook::new(SECRET)
        .unwrap()
        .sign("m4", now(), &bytes)
        .unwrap();
    let (code, text) = s
        .post_raw(
            &[("svix-id", "m4".into()), ("svix-signature", sig.clone())],
            bytes.clone(),
        )
        .await;
    assert_eq!((code, text.trim()), (400, "missing svix-timestamp header"));
    // Tampered body under a valid signature.
    let mut tampered = bytes.clone();
    tampered[10] ^= 1;
    let (code, _) = s
        .post_raw(
            &[
                ("svix-id", "m4".into()),
                ("svix-timestamp", now().to_string()),
                ("svix-signature", sig),
            ],
            tampered,
        )
        .await;
    assert_eq!(code, 400);
    // Unbranded header names are accepted.
    let sig = svix::webhooks::Webhook::new(SECRET)
        .unwrap()
        .sign("m5", now(), &bytes)
        .unwrap();
    let (code, _) = s
        .post_raw(
            &[
                ("webhook-id", "m5".into()),
                ("webhook-timestamp", now().to_string()),
                ("webhook-signature", sig),
            ],
            bytes,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(s.user("user_v").await.unwrap().name, "V Example");
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(r#"webhook_verification_failures_total{reason="stale_timestamp"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn oversized_empty_and_malformed_bodies() {
    let s = stack(SECRET).await;
    let big = vec![b'x'; 2 * 1024 * 1024];
    let (code, _) = s.post_raw(&[("svix-id", "m1".into())], big).await;
    assert_eq!(code, 413);
    let (code, _) = s.post_raw(&[], Vec::new()).await;
    assert_eq!(code, 400);
    // Signed, but not JSON / not a usable Clerk event: kept in quarantine, answered 200 so
    // Svix stops retrying, nothing written.
    let bytes = b"this is not json".to_vec();
    let sig = svix::webhooks::Webhook::new(SECRET)
        .unwrap()
        .sign("m2", now(), &bytes)
        .unwrap();
    let (code, text) = s
        .post_raw(
            &[
                ("svix-id", "m2".into()),
                ("svix-timestamp", now().to_string()),
                ("svix-signature", sig),
            ],
            bytes,
        )
        .await;
    assert_eq!((code, text.as_str()), (200, r#"{"outcome":"quarantined"}"#));
    let mut no_updated_at = user_event("user.created", "user_m", "M", T);
    no_updated_at["data"]
        .as_object_mut()
        .unwrap()
        .remove("updated_at");
    assert_eq!(s.send("m3", &no_updated_at).await.0, 200);
    let mut bad_id = user_event("user.created", "bob", "M", T);
    bad_id["data"]["id"] = json!("bob");
    assert_eq!(s.send("m4", &bad_id).await.0, 200);
    assert!(s.user("user_m").await.is_none());
    let kept = s.quarantined(Owner::Identity).await;
    assert_eq!(kept, ["m2", "m3", "m4"], "each signed refusal is kept");
}

/// `MAX_BODY_BYTES_IN_FLIGHT` bounds the bodies held at once, signed or not. With 1.5 MiB: a
/// client holding a 1 MiB share (headers sent, body not) leaves too little for three more
/// concurrent 600 KiB bodies, each answered 503 with Retry-After without being read, while a
/// small signed delivery still fits and applies; once the holder goes, the whole budget is
/// back and a signed delivery of almost 1 MiB applies.
#[tokio::test]
async fn bodies_beyond_the_in_flight_budget_get_503_and_the_budget_comes_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = stack_tuned(SECRET, None, None, None, |c| {
        c.max_body_bytes_in_flight = webhook_gateway::MAX_BODY + 512 * 1024;
        // The holder keeps its share for as long as the test needs it.
        c.request_read_timeout_secs = 30;
    })
    .await;
    let addr = s.gateway.addr;
    // A request whose headers announce `len` bytes, of which only one is sent.
    let open = |len: usize| async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /clerk HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        c
    };
    let in_flight = |bytes: usize| {
        let s = &s;
        async move {
            let line = format!("webhook_body_bytes_in_flight {bytes}");
            s.metrics().await.lines().any(|l| l == line)
        }
    };
    let holder = open(webhook_gateway::MAX_BODY).await;
    eventually("the holder took its share", Duration::from_secs(5), || {
        in_flight(webhook_gateway::MAX_BODY)
    })
    .await;
    let refused = futures::future::join_all((0..3).map(|_| async {
        let mut c = open(600 * 1024).await;
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        // Answered without the body: the client never sends it.
        tokio::time::timeout(Duration::from_secs(5), async {
            while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed without an answer");
                answer.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("answered within the budget's wait");
        String::from_utf8_lossy(&answer).to_lowercase()
    }))
    .await;
    for head in &refused {
        assert!(head.starts_with("http/1.1 503"), "{head}");
        assert!(head.contains("\r\nretry-after: 5\r\n"), "{head}");
    }
    // A signed delivery that fits in what is left applies while the holder holds.
    let small = user_event("user.created", "user_budget", "Small", T);
    assert_eq!(
        s.send("msg_budget_1", &small).await,
        (200, r#"{"outcome":"applied"}"#.to_owned())
    );
    assert!(
        s.metrics()
            .await
            .contains(r#"webhook_requests_total{event_type="",outcome="busy"} 3"#)
    );
    // The holder goes: its share comes back, and nothing else is left taken.
    drop(holder);
    eventually("the budget is whole again", Duration::from_secs(5), || {
        in_flight(0)
    })
    .await;
    let mut big = user_event("user.updated", "user_budget", "Big", T + 1);
    big["data"]["unknown_field"] = json!("x".repeat(1_000_000));
    assert_eq!(
        s.send("msg_budget_2", &big).await,
        (200, r#"{"outcome":"applied"}"#.to_owned())
    );
    assert_eq!(s.user("user_budget").await.unwrap().name, "Big Example");
    assert!(in_flight(0).await, "each share is given back");
}

#[tokio::test]
async fn secret_rotation_accepts_old_and_new() {
    let s = stack(&format!("{SECRET} {NEXT_SECRET}")).await;
    assert_eq!(
        s.send_signed(
            SECRET,
            "r1",
            now(),
            &user_event("user.created", "user_r", "R", T)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.send_signed(
            NEXT_SECRET,
            "r2",
            now(),
            &user_event("user.updated", "user_r", "R2", T + 1)
        )
        .await
        .0,
        200
    );
    assert_eq!(s.user("user_r").await.unwrap().name, "R2 Example");
}

#[tokio::test]
async fn an_outage_is_answered_503_by_a_ready_gateway_and_counted_then_the_retry_applies_once() {
    let mut s = stack(SECRET).await;
    let addr = s.identity.as_ref().unwrap().addr;
    s.identity.take().unwrap().stop().await.unwrap();
    let body = user_event("user.created", "user_o", "Outage", T);
    let started = Instant::now();
    let (code, _) = s.send("msg_out", &body).await;
    assert_eq!(code, 503);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "503 took {:?}",
        started.elapsed()
    );
    // The gateway stays ready, so the ingress keeps sending it deliveries: the 503 is its own
    // and is counted (VBaseWebhook5xx), and `/status` names the service that is down.
    let get = |path: &'static str| {
        let r = s
            .http
            .get(format!("http://{}{path}", s.gateway.addr))
            .send();
        async move {
            let r = r.await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/readyz").await, (200, "ready\n".into()));
    assert_eq!(
        get("/status").await,
        (
            503,
            "identity-service: not serving, workspace-service: serving\n".into()
        )
    );
    assert!(
        s.metrics().await.contains(
            r#"webhook_requests_total{event_type="user.created",outcome="unavailable"} 1"#
        ),
        "the 503 is counted"
    );
    // The service comes back on the same address; Svix retries the same message id.
    let cfg = s.identity_cfg.clone();
    s.identity =
        Some(RunningServer::start_on(addr, |l, sd| identity_service::run(cfg, l, sd)).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        let r = s.send("msg_out", &body).await;
        if r.0 == 200 || Instant::now() > deadline {
            break r;
        }
        assert_eq!(r.0, 503, "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(last.1, "{\"outcome\":\"applied\"}");
    assert_eq!(
        s.send("msg_out", &body).await,
        (200, "{\"outcome\":\"duplicate\"}".into())
    );
    assert_eq!(s.user("user_o").await.unwrap().name, "Outage Example");
}

#[tokio::test]
async fn a_platform_mounted_token_file_is_used_and_re_read_when_it_changes() {
    // One token for both services (aud lists both), as a platform would mount it, naming the
    // gateway as its subject (the services authorise the sync commands by it).
    let dir = std::env::temp_dir().join(format!("gw-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "not-a-token-yet").unwrap();
    let s = stack_with(SECRET, Some(file.clone()), None, None).await;
    let key = token_auth::signing::SigningKey::from_pem(
        &std::fs::read_to_string(
            s.issuers
                .keys
                .signing_key_file_of(token_auth::GATEWAY_SUBJECT),
        )
        .unwrap(),
    )
    .unwrap();
    let mint = || {
        let now = now();
        key.sign(&json!({"iss": "vbase-internal", "sub": "webhook-gateway", "aud": ["identity-service", "workspace-service"],
                         "iat": now, "nbf": now, "exp": now + 600}))
            .unwrap()
    };
    // An unusable token: the services refuse it, the gateway answers 503 (Svix retries).
    assert_eq!(
        s.send("t1", &user_event("user.created", "user_t", "T", T))
            .await
            .0,
        503
    );
    // The platform rotates the file: picked up without a restart.
    std::thread::sleep(Duration::from_millis(20)); // a distinct modification time
    std::fs::write(&file, mint()).unwrap();
    assert_eq!(
        s.send("t1", &user_event("user.created", "user_t", "T", T))
            .await
            .0,
        200
    );
    assert_eq!(s.user("user_t").await.unwrap().name, "T Example");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn concurrent_deliveries_share_calls_and_each_gets_its_own_answer() {
    let s = stack(SECRET).await;
    let deliveries = deliver_concurrently(&s).await;
    // Fewer UpsertUsers calls than deliveries: concurrent deliveries went together.
    let calls = s.downstream_calls("upsert_users").await;
    assert!(calls >= 1.0 && calls < deliveries as f64, "{calls} calls");
}

/// Mid-rollout, the identity-service may not have `UpsertUsers` yet: every delivery still gets
/// its own answer, through one `UpsertUser` call per command.
#[tokio::test]
async fn an_identity_service_without_the_batch_call_gets_one_call_per_command() {
    let s = stack_with(SECRET, None, Some(UPSERT_USERS), None).await;
    deliver_concurrently(&s).await;
    let refused = s.refused_batches.as_ref().unwrap().load(Ordering::SeqCst);
    assert!(refused >= 1, "the batch call was tried: {refused}");
    // 48 distinct events and the refused one, each sent alone at least once.
    let singles = s.downstream_calls("upsert_user").await;
    assert!(singles >= 49.0, "{singles} single calls");
}

/// Sends 97 deliveries at once and checks each answer and the end state; returns how many.
async fn deliver_concurrently(s: &Stack) -> usize {
    // 16 users x 3 versions, every delivery sent twice, and one the service refuses, all at once.
    let mut deliveries: Vec<(String, Value)> = Vec::new();
    for u in 0..16 {
        for v in 0..3 {
            let body = user_event(
                "user.updated",
                &format!("user_cc{u}"),
                &format!("V{v}"),
                T + v,
            );
            deliveries.push((format!("msg_cc{u}_{v}"), body.clone()));
            deliveries.push((format!("msg_cc{u}_{v}"), body));
        }
    }
    // An address identity-service refuses (names would be normalised, not refused).
    let mut refused = user_event("user.updated", "user_cc_bad", "Bad", T);
    refused["data"]["email_addresses"][1]["email_address"] = json!("not an address");
    deliveries.push(("msg_cc_bad".into(), refused));
    let answers = futures::future::join_all(deliveries.iter().map(|(id, b)| s.send(id, b))).await;
    for (u, v) in (0..16).flat_map(|u| (0..3).map(move |v| (u, v))) {
        let id = format!("msg_cc{u}_{v}");
        let got: Vec<&(u16, String)> = deliveries
            .iter()
            .zip(&answers)
            .filter(|((d, _), _)| *d == id)
            .map(|(_, a)| a)
            .collect();
        assert!(
            got.iter().all(|(status, _)| *status == 200),
            "{id}: {got:?}"
        );
        assert_eq!(
            got.iter().filter(|(_, b)| b.contains("duplicate")).count(),
            1,
            "{id}: one of the two deliveries is the duplicate: {got:?}"
        );
    }
    let (status, body) = answers.last().unwrap();
    assert_eq!(
        (*status, body.as_str()),
        (200, r#"{"outcome":"quarantined"}"#),
        "the refused delivery is kept, not retried"
    );
    for u in 0..16 {
        assert_eq!(
            s.user(&format!("user_cc{u}")).await.unwrap().name,
            "V2 Example"
        );
    }
    assert!(s.user("user_cc_bad").await.is_none());
    deliveries.len()
}

/// A service that answers after the gateway's deadline (it waits behind a concurrent writer):
/// the gateway answers 503 so Svix retries; the command still commits on its own, and the
/// retry of the same delivery is a duplicate, applied once.
#[tokio::test]
async fn a_service_answering_after_the_deadline_gets_503_and_the_retry_applies_once() {
    let s = stack(SECRET).await;
    let created = org_event("organization.created", "org_slow", "Slow", T);
    assert_eq!(s.send("msg_slow_c", &created).await.0, 200);
    let writer = service_harness::EntityLock::hold(s.workspace_db(), "org:org_slow").await;
    let renamed = org_event("organization.updated", "org_slow", "Renamed", T + 10);
    let started = Instant::now();
    let (code, _) = s.send("msg_slow_u", &renamed).await;
    assert_eq!(code, 503, "past the deadline");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(writer);
    eventually("the command committed", Duration::from_secs(10), || async {
        s.workspace_name("org_slow").await.as_deref() == Some("Renamed")
    })
    .await;
    assert_eq!(
        s.send("msg_slow_u", &renamed).await,
        (200, "{\"outcome\":\"duplicate\"}".into())
    );
}

/// A workspace of 5,000,000 child rows deleted through the gateway: answered 2xx at once,
/// gone for every RPC, then purged to the last row with each Liveblocks room queued once.
/// Long: `.ci/run` runs it on its own (`cargo test -p webhook-gateway --test gateway --
/// --ignored`).
#[tokio::test]
#[ignore = "five million rows: run with --ignored (CI does)"]
async fn a_workspace_of_five_million_rows_is_deleted_through_the_gateway_at_once() {
    let s = stack(SECRET).await;
    let created = org_event("organization.created", "org_huge", "Huge", T);
    assert_eq!(s.send("msg_huge_c", &created).await.0, 200);
    // 20 channels x 245,000 messages, 20 x 1,000 read receipts, 200 rooms with 400 documents,
    // code files, whiteboards or meetings each: 5,000,221 child rows with `general`.
    let fill = Instant::now();
    service_harness::execute(
        s.workspace_db(),
        "INSERT INTO channels (id, workspace_id, name)
           SELECT gen_random_uuid(), w.id, 'c' || g FROM workspaces w, generate_series(1, 20) g;
         INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), c.workspace_id, c.id, 'user_' || (g % 1000), 'message ' || g, now() - g * interval '1 second'
             FROM channels c, generate_series(1, 245000) g WHERE c.name <> 'general' ORDER BY g, c.id;
         INSERT INTO read_receipts (workspace_id, channel_id, clerk_user_id, last_read_at)
           SELECT c.workspace_id, c.id, 'user_' || g, now() FROM channels c, generate_series(1, 1000) g WHERE c.name <> 'general';
         INSERT INTO rooms (id, workspace_id, kind, name)
           SELECT gen_random_uuid(), w.id, (ARRAY['document','code','whiteboard','conference'])[1 + g % 4], 'r' || g
             FROM workspaces w, generate_series(0, 199) g;
         INSERT INTO documents (id, workspace_id, room_id, name) SELECT gen_random_uuid(), r.workspace_id, r.id, 'd' || g FROM rooms r, generate_series(1, 400) g WHERE r.kind = 'document';
         INSERT INTO code_files (id, workspace_id, room_id, name) SELECT gen_random_uuid(), r.workspace_id, r.id, 'f' || g FROM rooms r, generate_series(1, 400) g WHERE r.kind = 'code';
         INSERT INTO whiteboards (id, workspace_id, room_id, name) SELECT gen_random_uuid(), r.workspace_id, r.id, 'w' || g FROM rooms r, generate_series(1, 400) g WHERE r.kind = 'whiteboard';
         INSERT INTO meetings (id, workspace_id, room_id, title, starts_at, ends_at)
           SELECT gen_random_uuid(), r.workspace_id, r.id, 'm' || g, now(), now() + interval '1 hour' FROM rooms r, generate_series(1, 400) g WHERE r.kind = 'conference';
         ANALYZE;",
    )
    .await;
    eprintln!("loaded 5,000,221 rows in {:?}", fill.elapsed());
    let started = Instant::now();
    let deleted = deleted_event("organization.deleted", "organization", "org_huge", T + 20);
    let (code, body) = s.send("msg_huge_d", &deleted).await;
    let answered = started.elapsed();
    assert_eq!((code, body.as_str()), (200, "{\"outcome\":\"applied\"}"));
    assert!(
        answered < Duration::from_secs(1),
        "answered in {answered:?}"
    );
    assert_eq!(s.workspace_name("org_huge").await, None);
    assert!(!s.workspace_exists("org_huge").await);
    let db = s.workspace_db();
    eventually("purge done", Duration::from_secs(1200), || async {
        service_harness::scalar(db, "SELECT count(*) FROM purge_jobs").await == 0
    })
    .await;
    eprintln!(
        "answered in {answered:?}, purged in {:?}",
        started.elapsed()
    );
    let left =
        service_harness::tables_with_rows(s.workspace_db(), service_harness::WORKSPACE_BOOKKEEPING)
            .await;
    assert!(left.is_empty(), "rows left: {left:?}");
    // 200 rooms and 60,000 items, each queued once (the worker has no key here: they wait).
    assert_eq!(
        service_harness::scalar(db, "SELECT count(*) FROM liveblocks_cleanup_jobs").await,
        60_200
    );
}

/// A JWKS made with another tool names the gateway's key its own way: with SERVICE_JWT_KEY_ID
/// the gateway's tokens name that kid and are accepted; without it, they name the thumbprint
/// and every webhook answers 503.
#[tokio::test]
async fn a_custom_key_id_names_the_signing_key() {
    let body = user_event("user.created", "user_kid", "Kid", T);
    let told = stack_with(SECRET, None, None, Some(("ops-key-2026-11", true))).await;
    assert_eq!(told.send("msg_kid_1", &body).await.0, 200);
    let untold = stack_with(SECRET, None, None, Some(("ops-key-2026-11", false))).await;
    assert_eq!(untold.send("msg_kid_2", &body).await.0, 503);
}

/// Refused payloads are logged and answered without quoting their values: an email in a field
/// of the wrong type, or an address a service finds invalid, appears in no log line and in no
/// answer.
#[tokio::test]
async fn refusals_never_quote_personal_data() {
    let logs = captured_logs();
    let s = stack(SECRET).await;
    let mut wrong_type = user_event("user.created", "user_pd1", "Ada", T);
    wrong_type["data"]["updated_at"] = json!("ada.private@example.com");
    let (code, answer) = s.send("msg_pd1", &wrong_type).await;
    assert_eq!(code, 200);
    let mut invalid = user_event("user.created", "user_pd2", "Ada", T);
    invalid["data"]["email_addresses"][1]["email_address"] = json!("ada private@example.com");
    let (code2, answer2) = s.send("msg_pd2", &invalid).await;
    assert_eq!(code2, 200);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("msg_pd1") && text.contains("msg_pd2"),
        "the refusals were logged"
    );
    for leaked in ["ada.private", "ada private"] {
        assert!(!text.contains(leaked), "{leaked} in the logs");
        assert!(
            !answer.contains(leaked) && !answer2.contains(leaked),
            "{leaked} in an answer"
        );
    }
}

/// A client that sends its body a byte at a time is cut off with 408 once the read deadline
/// passes, instead of holding a connection for as long as it likes.
#[tokio::test]
async fn a_slow_body_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = stack(SECRET).await;
    let stream = tokio::net::TcpStream::connect(s.gateway.addr)
        .await
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(b"POST /clerk HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let started = Instant::now();
    let dribble = tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut answer))
        .await
        .expect("the gateway answered")
        .unwrap();
    let head = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    // The harness sets REQUEST_READ_TIMEOUT_SECS=1.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    dribble.abort();
}

/// Names longer than the services keep, and control characters, are normalised instead of
/// refused (a refusal loses the change once Svix gives up); a newer state without a primary
/// email leaves none stored, whatever order the states arrive in.
#[tokio::test]
async fn long_names_and_control_characters_are_normalised_not_refused() {
    let s = stack(SECRET).await;
    let first = format!("A\u{7}{}", "b".repeat(300));
    let (code, _) = s
        .send(
            "msg_long",
            &user_event("user.created", "user_long", &first, T),
        )
        .await;
    assert_eq!(code, 200);
    let u = s.user("user_long").await.unwrap();
    assert_eq!(u.name.chars().count(), 256);
    assert!(u.name.starts_with("Ab") && !u.name.chars().any(char::is_control));
    let mut no_email = user_event("user.updated", "user_long", "Short", T + 1);
    no_email["data"]["primary_email_address_id"] = json!(null);
    assert_eq!(s.send("msg_long2", &no_email).await.0, 200);
    let u = s.user("user_long").await.unwrap();
    assert_eq!((u.name.as_str(), u.email.as_str()), ("Short Example", ""));
    // The older state, with its address, arriving late changes nothing.
    let late = user_event("user.updated", "user_long", "Short", T);
    assert_eq!(s.send("msg_long_late", &late).await.0, 200);
    let u = s.user("user_long").await.unwrap();
    assert_eq!((u.name.as_str(), u.email.as_str()), ("Short Example", ""));
    let mut org = org_event("organization.created", "org_long", "x", T);
    org["data"]["name"] = json!(format!("{}\u{1b}", "Acme ".repeat(100)));
    assert_eq!(s.send("msg_long3", &org).await.0, 200);
    assert_eq!(
        s.workspace_name("org_long")
            .await
            .map(|n| n.chars().count()),
        Some(256),
        "cut at 256 characters"
    );
    // A custom role key longer than the 64 characters we store, with a control character.
    let role = format!("org:\u{0}{}", "r".repeat(100));
    let long_role = membership_event(
        "organizationMembership.created",
        "org_long",
        "user_long",
        &role,
        T,
    );
    assert_eq!(
        s.send("msg_long4", &long_role).await,
        (200, r#"{"outcome":"applied"}"#.to_owned())
    );
    let members = s.members("org_long").await;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].1, format!("org:{}", "r".repeat(60)));
}

/// `user.updated` of a banned user updates the user and refuses in workspace-service and in
/// identity-service (also with the user's row cached) every token of the user issued before the
/// ban; another member is not touched.
#[tokio::test]
async fn a_ban_reaches_both_services_and_refuses_the_users_earlier_tokens() {
    let s = stack(SECRET).await;
    let org = org_event("organization.created", "org_b", "Acme", T);
    assert_eq!(s.send("msg_bo", &org).await.0, 200);
    for user in ["user_banned", "user_other"] {
        let m = membership_event_of(
            "organizationMembership.created",
            (&format!("orgmem_{user}"), 1654013203217),
            "org_b",
            user,
            "org:member",
            T,
        );
        assert_eq!(s.send(&format!("msg_m_{user}"), &m).await.0, 200);
    }
    let list = |user: &str| {
        s.issuers.member(
            user,
            "org_b",
            "org:member",
            wsp::ListChannelsRequest {
                clerk_org_id: "org_b".into(),
                ..Default::default()
            },
        )
    };
    let mut w = s.workspace().await;
    let earlier = list("user_banned");
    w.list_channels(list("user_banned")).await.unwrap();
    for (id, user) in [("msg_ub", "user_banned"), ("msg_uo", "user_other")] {
        assert_eq!(
            s.send(id, &user_event("user.created", user, "Before", T))
                .await
                .0,
            200
        );
    }
    let me = |user: &str| s.issuers.user(user, idp::GetCurrentUserRequest {});
    let mut i = s.identity().await;
    let earlier_me = me("user_banned");
    let earlier_store = s.issuers.user("user_banned", idp::StoreUserRequest {});
    i.get_current_user(me("user_banned")).await.unwrap();

    // Banned two seconds after the token was issued (Clerk's clock, milliseconds).
    let at = (now() + 2) * 1000;
    let mut ban = user_event("user.updated", "user_banned", "Banned", at);
    ban["data"]["banned"] = json!(true);
    assert_eq!(
        s.send("msg_ban", &ban).await,
        (200, "{\"outcome\":\"applied\"}".into())
    );
    assert_eq!(s.user("user_banned").await.unwrap().name, "Banned Example");
    let refused = w.list_channels(earlier).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("banned"), "{refused:?}");
    assert_eq!(s.downstream_calls("revoke_user_tokens").await, 1.0);
    w.list_channels(list("user_other")).await.unwrap();
    let refusals = [
        i.get_current_user(earlier_me).await.map(drop),
        i.store_user(earlier_store).await.map(drop),
    ];
    for refused in refusals {
        let refused = refused.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("banned"), "{refused:?}");
    }
    assert_eq!(s.user("user_banned").await.unwrap().name, "Banned Example");
    i.get_current_user(me("user_other")).await.unwrap();
    // The retry of the same delivery changes nothing.
    assert_eq!(
        s.send("msg_ban", &ban).await,
        (200, "{\"outcome\":\"duplicate\"}".into())
    );
}

/// Directory Sync's removal (`deprovisioned`) revokes every session in Clerk, like a ban: the
/// user's earlier tokens are refused by both services.
#[tokio::test]
async fn a_deprovisioned_user_loses_the_earlier_tokens_like_a_banned_one() {
    let s = stack(SECRET).await;
    assert_eq!(
        s.send(
            "msg_do",
            &org_event("organization.created", "org_d", "Acme", T)
        )
        .await
        .0,
        200
    );
    let m = membership_event_of(
        "organizationMembership.created",
        ("orgmem_gone", 1654013203217),
        "org_d",
        "user_gone",
        "org:member",
        T,
    );
    assert_eq!(s.send("msg_dm", &m).await.0, 200);
    let created = user_event("user.created", "user_gone", "Before", T);
    assert_eq!(s.send("msg_du", &created).await.0, 200);
    let list = s.issuers.member(
        "user_gone",
        "org_d",
        "org:member",
        wsp::ListChannelsRequest {
            clerk_org_id: "org_d".into(),
            ..Default::default()
        },
    );
    let me = s.issuers.user("user_gone", idp::GetCurrentUserRequest {});

    let at = (now() + 2) * 1000;
    let mut gone = user_event("user.updated", "user_gone", "Gone", at);
    gone["data"]["deprovisioned"] = json!(true);
    assert_eq!(
        s.send("msg_dp", &gone).await,
        (200, "{\"outcome\":\"applied\"}".into())
    );
    assert_eq!(s.downstream_calls("revoke_user_tokens").await, 1.0);
    let mut w = s.workspace().await;
    let mut i = s.identity().await;
    for refused in [
        w.list_channels(list).await.map(drop),
        i.get_current_user(me).await.map(drop),
    ] {
        let refused = refused.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("deprovisioned"), "{refused:?}");
    }
}
