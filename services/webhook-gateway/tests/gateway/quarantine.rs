//! Signed deliveries that cannot be applied are kept in the owning service's quarantine and
//! answered 200; `replay-quarantined` applies them once the code accepts them; operators list,
//! read and discard them through the admin services, and only operators may.

use crate::support::*;
use serde_json::json;
use service_harness::eventually;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;
use vbase_proto::ops::v1 as ops;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_admin_service_client::WorkspaceAdminServiceClient;
use webhook_gateway::quarantine::{ReplaySummary, replay};

/// Keeps `body` under `id` as the gateway does (an older gateway refused it, say).
async fn keep_directly(s: &Stack, id: &str, body: &serde_json::Value) {
    let mut c = s.intake(Owner::Identity).await;
    c.quarantine_delivery(s.issuers.gateway(
        "identity-service",
        ops::QuarantineDeliveryRequest {
            svix_id: id.into(),
            event_type: body["type"].as_str().unwrap().into(),
            reason: "refused by an older gateway".into(),
            body: serde_json::to_vec(body).unwrap(),
        },
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn refused_deliveries_are_kept_then_replayed_exactly_once() {
    let s = stack(SECRET).await;
    // Refused by identity-service (an invalid address) and unparseable for the gateway (an
    // organization without its id): both answered 200, both kept by their owner.
    let mut bad_email = user_event("user.updated", "user_q1", "Q", T);
    bad_email["data"]["email_addresses"][1]["email_address"] = json!("not an address");
    let sent = serde_json::to_vec(&bad_email).unwrap();
    assert_eq!(
        s.send("msg_q1", &bad_email).await,
        (200, r#"{"outcome":"quarantined"}"#.to_owned())
    );
    let mut no_id = org_event("organization.created", "org_q2", "Q2", T);
    no_id["data"].as_object_mut().unwrap().remove("id");
    assert_eq!(s.send("msg_q2", &no_id).await.0, 200);
    assert!(s.user("user_q1").await.is_none(), "nothing was applied");
    assert_eq!(s.quarantined(Owner::Identity).await, ["msg_q1"]);
    assert_eq!(s.quarantined(Owner::Workspace).await, ["msg_q2"]);
    let kept = s.quarantined_one(Owner::Identity, "msg_q1").await;
    assert_eq!(kept.body, sent, "the raw body is kept as signed");
    assert_eq!(kept.event_type, "user.updated");
    assert!(
        kept.reason.contains("refused by a service"),
        "{}",
        kept.reason
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(
            r#"webhook_requests_total{event_type="user.updated",outcome="quarantined"} 1"#
        ),
        "{metrics}"
    );
    // Svix delivers it again (a manual resend): still one record, attempts counted.
    assert_eq!(s.send("msg_q1", &bad_email).await.0, 200);
    assert_eq!(
        s.quarantined_one(Owner::Identity, "msg_q1").await.attempts,
        2
    );

    // Bodies today's code accepts: one never applied, one applied before under its id.
    let fixed = user_event("user.created", "user_q3", "Fixed", T);
    keep_directly(&s, "msg_q3", &fixed).await;
    let applied_before = user_event("user.created", "user_q4", "Before", T);
    assert_eq!(s.send("msg_q4", &applied_before).await.0, 200);
    keep_directly(&s, "msg_q4", &applied_before).await;

    let down = s.gateway_downstream();
    let first = replay(&down, None).await;
    assert_eq!(
        first,
        ReplaySummary {
            examined: 4,
            applied: 1,
            duplicate: 1,
            still_refused: 2,
            ..ReplaySummary::default()
        }
    );
    assert_eq!(s.user("user_q3").await.unwrap().name, "Fixed Example");
    assert_eq!(s.quarantined(Owner::Identity).await, ["msg_q1"]);
    let resolved = s
        .quarantined_in(Owner::Identity, ops::QuarantineState::Resolved)
        .await;
    let resolutions: Vec<(&str, &str)> = resolved
        .iter()
        .map(|d| (d.svix_id.as_str(), d.resolution.as_str()))
        .collect();
    assert_eq!(
        resolutions,
        [
            ("msg_q3", "replayed: applied"),
            ("msg_q4", "replayed: duplicate")
        ]
    );
    assert_eq!(
        s.quarantined_one(Owner::Identity, "msg_q1").await.attempts,
        3,
        "a replay that is still refused counts an attempt and keeps the delivery open"
    );

    // Replaying again applies nothing; a resolved delivery kept again stays resolved.
    let second = replay(&down, None).await;
    assert_eq!(
        (second.examined, second.applied, second.still_refused),
        (2, 0, 2)
    );
    keep_directly(&s, "msg_q3", &fixed).await;
    assert_eq!(s.quarantined(Owner::Identity).await, ["msg_q1"]);
    let only = replay(&down, Some("msg_q2")).await;
    assert_eq!((only.examined, only.still_refused), (1, 1));

    // The operator gives up on one: kept as discarded, never replayed again.
    let mut admin = s.admin(Owner::Identity).await;
    let discarded = admin
        .discard_quarantined(s.issuers.operator(
            "identity-service",
            ops::DiscardQuarantinedRequest {
                svix_id: "msg_q1".into(),
                reason: "address fixed in Clerk; the next user.updated carries it".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(discarded.discarded);
    let empty_reason = admin
        .discard_quarantined(s.issuers.operator(
            "identity-service",
            ops::DiscardQuarantinedRequest {
                svix_id: "msg_q1".into(),
                reason: " ".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(empty_reason.code(), Code::InvalidArgument);
    assert!(s.quarantined(Owner::Identity).await.is_empty());
    assert_eq!(replay(&down, None).await.examined, 1, "only msg_q2 is left");
}

/// Mid-rollout, a service of another release may not serve the ledger's intake: a delivery
/// that must be quarantined there is answered 503 (its `QuarantineDelivery` is UNIMPLEMENTED),
/// so Svix retries it and nothing is lost (the earlier gateway against the later services meets
/// the same answer for its own `QuarantineDelivery`: deploy/README.md, the upgrade order).
#[tokio::test]
async fn a_service_without_the_intake_answers_503_so_svix_retries() {
    let s = stack_with(
        SECRET,
        None,
        Some("/vbase.ops.v1.DeliveryIntakeService/QuarantineDelivery"),
        None,
    )
    .await;
    let mut bad_email = user_event("user.updated", "user_u1", "U", T);
    bad_email["data"]["email_addresses"][1]["email_address"] = json!("not an address");
    assert_eq!(s.send("msg_u1", &bad_email).await.0, 503);
    let refused = s.refused_batches.as_ref().unwrap().load(Ordering::SeqCst);
    assert_eq!(refused, 1, "the intake was asked once");
    assert!(s.quarantined(Owner::Identity).await.is_empty());
    assert!(s.user("user_u1").await.is_none(), "nothing was applied");
}

/// An open delivery keeps its body however old it is (it can always be replayed); a resolved
/// or discarded one goes, body and all, a retention (14 days) after it was closed.
#[tokio::test]
async fn an_open_delivery_keeps_its_body_and_closed_ones_go_a_retention_after_closing() {
    let s = stack(SECRET).await;
    let body = user_event("user.created", "user_r1", "R", T);
    for id in ["msg_r1", "msg_r2", "msg_r3"] {
        keep_directly(&s, id, &body).await;
    }
    let mut c = s.intake(Owner::Identity).await;
    for id in ["msg_r2", "msg_r3"] {
        c.resolve_quarantined(s.issuers.gateway(
            "identity-service",
            ops::ResolveQuarantinedRequest {
                svix_id: id.into(),
                resolution: "replayed: applied".into(),
            },
        ))
        .await
        .unwrap();
    }
    // All three were received 15 days ago (the retention is 14): r1 is still open, r2 was
    // closed 15 days ago, r3 today.
    service_harness::execute(
        s._dbs.0.url(),
        "UPDATE quarantined_deliveries SET received_at = now() - interval '15 days'",
    )
    .await;
    service_harness::execute(
        s._dbs.0.url(),
        "UPDATE quarantined_deliveries SET closed_at = now() - interval '15 days' WHERE svix_id = 'msg_r2'",
    )
    .await;
    // The upkeep applies the retention a few seconds after the start, then hourly.
    eventually("the retention ran", Duration::from_secs(15), || async {
        service_harness::scalar(
            s._dbs.0.url(),
            "SELECT count(*) FROM quarantined_deliveries WHERE svix_id = 'msg_r2'",
        )
        .await
            == 0
    })
    .await;
    let open = s.quarantined_one(Owner::Identity, "msg_r1").await;
    assert!(
        !open.body.is_empty() && !open.body_removed,
        "an open delivery keeps its body: {open:?}"
    );
    assert_eq!(open.state, ops::QuarantineState::Open as i32);
    let closed_today = s.quarantined_one(Owner::Identity, "msg_r3").await;
    assert!(
        !closed_today.body.is_empty(),
        "the retention counts from the closing"
    );
    // However old, the open one is replayed with its body.
    let summary = replay(&s.gateway_downstream(), Some("msg_r1")).await;
    assert_eq!(
        (summary.examined, summary.without_body, summary.applied),
        (1, 0, 1),
        "{summary:?}"
    );
    assert!(s.user("user_r1").await.is_some());
}

#[tokio::test]
async fn sync_status_counts_what_the_commands_did() {
    let s = stack(SECRET).await;
    assert_eq!(
        s.send("msg_s1", &user_event("user.created", "user_s", "A", T))
            .await
            .0,
        200
    );
    assert_eq!(
        s.send("msg_s1", &user_event("user.created", "user_s", "A", T))
            .await
            .0,
        200
    );
    assert_eq!(
        s.send("msg_s2", &user_event("user.updated", "user_s", "B", T - 5))
            .await
            .0,
        200
    );
    assert_eq!(
        s.send(
            "msg_s3",
            &org_event("organization.created", "org_s", "S", T)
        )
        .await
        .0,
        200
    );
    let mut bad = org_event("organization.updated", "org_s", "S", T + 1);
    bad["data"].as_object_mut().unwrap().remove("id");
    assert_eq!(s.send("msg_s4", &bad).await.0, 200);
    let status = |owner: Owner| {
        let s = &s;
        async move {
            let req = s
                .issuers
                .operator(owner.audience(), ops::GetSyncStatusRequest {});
            s.admin(owner)
                .await
                .get_sync_status(req)
                .await
                .unwrap()
                .into_inner()
        }
    };
    // Each replica writes its counts every few seconds.
    eventually(
        "the counts were written",
        Duration::from_secs(15),
        || async {
            status(Owner::Identity).await.commands.iter().any(|c| {
                c.last_hour
                    .as_ref()
                    .is_some_and(|h| h.applied >= 1 && h.duplicate >= 1 && h.stale >= 1)
            })
        },
    )
    .await;
    let identity = status(Owner::Identity).await;
    let upsert = identity
        .commands
        .iter()
        .find(|c| c.command == "upsert_user")
        .unwrap();
    assert_eq!(
        upsert.last_hour,
        Some(ops::OutcomeCounts {
            applied: 1,
            duplicate: 1,
            stale: 1
        })
    );
    assert!(upsert.last_applied_at.is_some());
    assert!((0.0..60.0).contains(&upsert.last_applied_age_seconds));
    eventually("workspace counts", Duration::from_secs(15), || async {
        status(Owner::Workspace)
            .await
            .commands
            .iter()
            .any(|c| c.command == "upsert_workspace")
    })
    .await;
    let workspace = status(Owner::Workspace).await;
    assert_eq!(
        (workspace.quarantine_open, workspace.quarantined_last_hour),
        (1, 1)
    );
    assert!(workspace.quarantine_oldest_open_seconds < 60.0);
    assert_eq!(identity.quarantine_open, 0);
}

/// Every admin method answers an operator, and refuses users, the gateway and a caller granted
/// every service method; every intake method answers the gateway and refuses everyone else.
#[tokio::test]
async fn only_operators_reach_the_admin_services() {
    let s = stack(SECRET).await;
    let mut identity = s.admin(Owner::Identity).await;
    let mut workspace_ledger = s.admin(Owner::Workspace).await;
    let mut workspace = WorkspaceAdminServiceClient::new(s.workspace.channel().await);
    type Token<'a> = Box<dyn Fn(&str) -> String + 'a>;
    let issuers = &s.issuers;
    let who: Vec<(&str, Token, bool)> = vec![
        (
            "operator",
            Box::new(|aud: &str| issuers.keys.token_as(service_harness::OPERATOR, aud)),
            true,
        ),
        (
            "gateway",
            Box::new(|aud: &str| issuers.keys.token_as(token_auth::GATEWAY_SUBJECT, aud)),
            false,
        ),
        (
            "granted every method",
            Box::new(|aud: &str| issuers.keys.token_for(aud)),
            false,
        ),
        (
            "user",
            Box::new(|_: &str| {
                issuers
                    .clerk
                    .user_token("user_x", "X", "x@example.com", None)
            }),
            false,
        ),
    ];
    for (name, token, admitted) in &who {
        let (it, wt) = (token("identity-service"), token("workspace-service"));
        fn with<T>(token: &str, m: T) -> tonic::Request<T> {
            service_harness::bearer(m, token)
        }
        macro_rules! id {
            ($m:expr) => {
                with(&it, $m)
            };
        }
        macro_rules! ws {
            ($m:expr) => {
                with(&wt, $m)
            };
        }
        let answers: Vec<(&str, Result<(), tonic::Status>)> = vec![
            (
                "identity GetSyncStatus",
                identity
                    .get_sync_status(id!(ops::GetSyncStatusRequest {}))
                    .await
                    .map(drop),
            ),
            (
                "identity ListQuarantined",
                identity
                    .list_quarantined(id!(ops::ListQuarantinedRequest::default()))
                    .await
                    .map(drop),
            ),
            (
                "identity GetQuarantined",
                identity
                    .get_quarantined(id!(ops::GetQuarantinedRequest {
                        svix_id: "msg_none".into()
                    }))
                    .await
                    .map(drop),
            ),
            (
                "identity DiscardQuarantined",
                identity
                    .discard_quarantined(id!(ops::DiscardQuarantinedRequest {
                        svix_id: "msg_none".into(),
                        reason: "r".into()
                    }))
                    .await
                    .map(drop),
            ),
            (
                "identity ListReconcileRuns",
                identity
                    .list_reconcile_runs(id!(ops::ListReconcileRunsRequest { page_size: 0 }))
                    .await
                    .map(drop),
            ),
            (
                "workspace ListReconcileRuns",
                workspace_ledger
                    .list_reconcile_runs(ws!(ops::ListReconcileRunsRequest { page_size: 0 }))
                    .await
                    .map(drop),
            ),
            (
                "workspace GetSyncStatus",
                workspace_ledger
                    .get_sync_status(ws!(ops::GetSyncStatusRequest {}))
                    .await
                    .map(drop),
            ),
            (
                "workspace ListQuarantined",
                workspace_ledger
                    .list_quarantined(ws!(ops::ListQuarantinedRequest::default()))
                    .await
                    .map(drop),
            ),
            (
                "workspace GetQuarantined",
                workspace_ledger
                    .get_quarantined(ws!(ops::GetQuarantinedRequest {
                        svix_id: "msg_none".into()
                    }))
                    .await
                    .map(drop),
            ),
            (
                "workspace DiscardQuarantined",
                workspace_ledger
                    .discard_quarantined(ws!(ops::DiscardQuarantinedRequest {
                        svix_id: "msg_none".into(),
                        reason: "r".into()
                    }))
                    .await
                    .map(drop),
            ),
            (
                "workspace ListJobs",
                workspace
                    .list_jobs(ws!(wsp::ListJobsRequest {
                        queue: wsp::JobQueue::Purge.into(),
                        ..Default::default()
                    }))
                    .await
                    .map(drop),
            ),
            (
                "workspace RetryJobs",
                workspace
                    .retry_jobs(ws!(wsp::RetryJobsRequest {
                        queue: wsp::JobQueue::Purge.into(),
                        which: Some(wsp::retry_jobs_request::Which::State(
                            wsp::JobState::Dead.into()
                        ))
                    }))
                    .await
                    .map(drop),
            ),
            (
                "workspace GetQueueDepths",
                workspace
                    .get_queue_depths(ws!(wsp::GetQueueDepthsRequest {}))
                    .await
                    .map(drop),
            ),
        ];
        for (method, answer) in answers {
            match (admitted, answer) {
                (true, Ok(())) => {}
                // Past the access check: the delivery does not exist.
                (true, Err(st)) if st.code() == Code::NotFound => {}
                (false, Err(st)) if st.code() == Code::PermissionDenied => {}
                (_, other) => panic!("{name} calling {method}: {other:?}"),
            }
        }
    }
    // The intake is the gateway's: operators, users and a caller granted every service
    // method are refused there, by both services; the gateway is let through.
    for (name, token, _) in &who {
        for owner in [Owner::Identity, Owner::Workspace] {
            let t = token(owner.audience());
            fn with<T>(token: &str, m: T) -> tonic::Request<T> {
                service_harness::bearer(m, token)
            }
            let mut c = s.intake(owner).await;
            let answers: Vec<(&str, Result<(), tonic::Status>)> = vec![
                (
                    "QuarantineDelivery",
                    c.quarantine_delivery(with(
                        &t,
                        ops::QuarantineDeliveryRequest {
                            svix_id: "msg_roles".into(),
                            event_type: "user.created".into(),
                            reason: "r".into(),
                            body: b"{}".to_vec(),
                        },
                    ))
                    .await
                    .map(drop),
                ),
                (
                    "ListQuarantined",
                    c.list_quarantined(with(
                        &t,
                        ops::ListQuarantinedRequest {
                            with_bodies: true,
                            ..Default::default()
                        },
                    ))
                    .await
                    .map(drop),
                ),
                (
                    "ResolveQuarantined",
                    c.resolve_quarantined(with(
                        &t,
                        ops::ResolveQuarantinedRequest {
                            svix_id: "msg_none".into(),
                            resolution: "r".into(),
                        },
                    ))
                    .await
                    .map(drop),
                ),
                (
                    "ListClerkInstances",
                    c.list_clerk_instances(with(&t, ops::ListClerkInstancesRequest {}))
                        .await
                        .map(drop),
                ),
                (
                    "ConfirmClerkInstance",
                    c.confirm_clerk_instance(with(
                        &t,
                        ops::ConfirmClerkInstanceRequest {
                            instance_id: "ins_roles".into(),
                        },
                    ))
                    .await
                    .map(drop),
                ),
            ];
            for (method, answer) in answers {
                match (*name == "gateway", answer) {
                    (true, Ok(())) => {}
                    (false, Err(st)) if st.code() == Code::PermissionDenied => {}
                    (_, other) => panic!("{name} calling {owner:?} {method}: {other:?}"),
                }
            }
        }
    }
}

/// A delivery that fails at a service for a reason of its own (here a trigger that refuses one
/// user: INTERNAL) is kept open with the reason, and the replay goes on with the deliveries
/// after it.
#[tokio::test]
async fn a_delivery_failing_at_a_service_does_not_stop_the_replay() {
    let s = stack(SECRET).await;
    service_harness::execute(
        s._dbs.0.url(),
        "CREATE FUNCTION refuse_user() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.clerk_id = 'user_f1' THEN RAISE EXCEPTION 'refused by the test'; END IF;
             RETURN NEW;
           END $$;
         CREATE TRIGGER refuse_user BEFORE INSERT OR UPDATE ON users
           FOR EACH ROW EXECUTE FUNCTION refuse_user();",
    )
    .await;
    let failing = user_event("user.created", "user_f1", "Failing", T);
    keep_directly(&s, "msg_f1", &failing).await;
    keep_directly(
        &s,
        "msg_f2",
        &user_event("user.created", "user_f2", "Next", T),
    )
    .await;
    let summary = replay(&s.gateway_downstream(), None).await;
    assert_eq!(
        summary,
        ReplaySummary {
            examined: 2,
            applied: 1,
            failed: 1,
            ..ReplaySummary::default()
        }
    );
    assert_eq!(s.user("user_f2").await.unwrap().name, "Next Example");
    assert_eq!(s.quarantined(Owner::Identity).await, ["msg_f1"]);
    let kept = s.quarantined_one(Owner::Identity, "msg_f1").await;
    assert!(
        kept.reason.contains("failed at a service"),
        "{}",
        kept.reason
    );
    assert_eq!(kept.attempts, 2, "the replay counts an attempt");
}

/// Open deliveries of about 900 KiB each: a listing page ends once its bodies pass 2 MiB, so
/// each answer stays within gRPC's 4 MiB message limit (the gateway's and this test's clients
/// keep tonic's default), the page token goes on after the last row, and a replay applies all.
#[tokio::test]
async fn large_bodies_are_listed_a_few_per_page_and_all_replayed() {
    let s = stack(SECRET).await;
    let pad = "x".repeat(900 * 1024);
    for i in 0..5 {
        let mut body = user_event("user.created", &format!("user_big{i}"), "Big", T);
        body["data"]["unknown_field"] = json!(pad);
        keep_directly(&s, &format!("msg_big{i}"), &body).await;
    }
    let mut intake = s.intake(Owner::Identity).await;
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let req = s.issuers.gateway(
            "identity-service",
            ops::ListQuarantinedRequest {
                page_size: 100,
                page_token: token,
                state: ops::QuarantineState::Open.into(),
                with_bodies: true,
            },
        );
        let page = intake.list_quarantined(req).await.unwrap().into_inner();
        assert!(page.deliveries.iter().all(|d| d.body.len() > 900 * 1024));
        pages.push(
            page.deliveries
                .into_iter()
                .map(|d| d.svix_id)
                .collect::<Vec<_>>(),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // The third body begins before 2 MiB, the fourth after.
    assert_eq!(
        pages,
        [
            vec!["msg_big0", "msg_big1", "msg_big2"],
            vec!["msg_big3", "msg_big4"]
        ]
    );
    let summary = replay(&s.gateway_downstream(), None).await;
    assert_eq!(
        summary,
        ReplaySummary {
            examined: 5,
            applied: 5,
            ..ReplaySummary::default()
        }
    );
    for i in 0..5 {
        assert!(
            s.user(&format!("user_big{i}")).await.is_some(),
            "user_big{i}"
        );
    }
    assert!(s.quarantined(Owner::Identity).await.is_empty());
}

/// A delivery refused again after an operator discarded its record: the ledger leaves the
/// record discarded (nothing is kept), and the gateway says so in its answer, its count and a
/// log line instead of "quarantined". Still 200: a retry would meet the same closed record.
#[tokio::test]
async fn a_delivery_refused_after_its_record_was_discarded_is_not_called_quarantined() {
    let logs = captured_logs();
    let s = stack(SECRET).await;
    let mut bad_email = user_event("user.updated", "user_dq", "D", T);
    bad_email["data"]["email_addresses"][1]["email_address"] = json!("not an address");
    assert_eq!(
        s.send("msg_dq1", &bad_email).await,
        (200, r#"{"outcome":"quarantined"}"#.to_owned())
    );
    let discarded = s
        .admin(Owner::Identity)
        .await
        .discard_quarantined(s.issuers.operator(
            "identity-service",
            ops::DiscardQuarantinedRequest {
                svix_id: "msg_dq1".into(),
                reason: "not wanted".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(discarded.discarded);
    // Svix delivers it again (a manual resend): refused again, and nothing is kept.
    assert_eq!(
        s.send("msg_dq1", &bad_email).await,
        (200, r#"{"outcome":"refused_closed"}"#.to_owned())
    );
    let record = s.quarantined_one(Owner::Identity, "msg_dq1").await;
    assert_eq!(
        (record.state, record.attempts),
        (ops::QuarantineState::Discarded as i32, 1),
        "the record stays discarded, untouched"
    );
    assert!(s.quarantined(Owner::Identity).await.is_empty());
    let metrics = s.metrics().await;
    for counted in [
        r#"webhook_requests_total{event_type="user.updated",outcome="quarantined"} 1"#,
        r#"webhook_requests_total{event_type="user.updated",outcome="refused_closed"} 1"#,
    ] {
        assert!(metrics.contains(counted), "{counted}\n{metrics}");
    }
    let text = logs.text();
    assert!(
        text.lines().any(|l| l.contains("msg_dq1")
            && l.contains("resolved or discarded before and stays so")
            && l.contains("\"level\":\"WARN\"")),
        "the warn line names the delivery"
    );
}
