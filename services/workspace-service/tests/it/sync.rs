//! Sync commands from the gateway: exactly once, in source order, tombstones, membership order.

use crate::support;

use support::{Env, T0, delete_ws, membership, start_with, ts, upsert_ws};
use tonic::Code;
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::CommandOutcome as O;

async fn channels(env: &Env, org: &str) -> Vec<String> {
    let mut c = env.client().await;
    let r = c
        .list_channels(env.service(pb::ListChannelsRequest {
            clerk_org_id: org.into(),
            page_size: 0,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    r.channels.into_iter().map(|c| c.name).collect()
}

async fn members(env: &Env, org: &str) -> Vec<(String, String)> {
    let mut c = env.client().await;
    let r = c
        .list_members(env.service(pb::ListMembersRequest {
            clerk_org_id: org.into(),
            page_size: 0,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    r.members
        .into_iter()
        .map(|m| (m.clerk_user_id, m.role))
        .collect()
}

#[tokio::test]
async fn creation_makes_general_once_even_under_duplicates_and_concurrency() {
    let env = start_with(false).await;
    let mut c = env.client().await;
    let first = c
        .upsert_workspace(env.service(upsert_ws("e1", 1, "org_a", "Acme")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.outcome(), O::Applied);
    let ws = first.workspace.unwrap();
    assert_eq!(
        (
            ws.name.as_str(),
            ws.slug.as_str(),
            ws.owner_clerk_id.as_str()
        ),
        ("Acme", "acme", "user_owner")
    );
    let dup = c
        .upsert_workspace(env.service(upsert_ws("e1", 1, "org_a", "Acme")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dup.outcome(), O::Duplicate);
    assert_eq!(channels(&env, "org_a").await, vec!["general"]);

    // 20 concurrent creation events (distinct deliveries) for a new organization.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = env.client().await;
        let req = env.service(upsert_ws(&format!("c{i}"), 1 + i % 3, "org_b", "Bee"));
        tasks.push(tokio::spawn(async move { c.upsert_workspace(req).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(channels(&env, "org_b").await, vec!["general"]);
}

#[tokio::test]
async fn updates_apply_in_source_order_only() {
    let env = start_with(false).await;
    let mut c = env.client().await;
    c.upsert_workspace(env.service(upsert_ws("e1", 10, "org_a", "First")))
        .await
        .unwrap();
    let r = c
        .upsert_workspace(env.service(upsert_ws("e2", 30, "org_a", "Third")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), O::Applied);
    let r = c
        .upsert_workspace(env.service(upsert_ws("e3", 20, "org_a", "Second")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), O::Stale);
    let ws = c
        .get_workspace(env.service(pb::GetWorkspaceRequest {
            clerk_org_id: "org_a".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ws.workspace.unwrap().name, "Third");
}

#[tokio::test]
async fn deleted_workspaces_are_never_resurrected() {
    let env = start_with(false).await;
    let mut c = env.client().await;
    c.upsert_workspace(env.service(upsert_ws("e1", 10, "org_a", "Acme")))
        .await
        .unwrap();
    let d = c
        .delete_workspace(env.service(delete_ws("d1", 20, "org_a")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.outcome(), O::Applied);
    // A redelivery, a second delete event, a late update and a newer one: all change nothing.
    assert_eq!(
        c.delete_workspace(env.service(delete_ws("d1", 20, "org_a")))
            .await
            .unwrap()
            .into_inner()
            .outcome(),
        O::Duplicate
    );
    assert_eq!(
        c.delete_workspace(env.service(delete_ws("d2", 25, "org_a")))
            .await
            .unwrap()
            .into_inner()
            .outcome(),
        O::Stale
    );
    assert_eq!(
        c.upsert_workspace(env.service(upsert_ws("e2", 15, "org_a", "Late")))
            .await
            .unwrap()
            .into_inner()
            .outcome(),
        O::Stale
    );
    assert_eq!(
        c.upsert_workspace(env.service(upsert_ws("e3", 99, "org_a", "New")))
            .await
            .unwrap()
            .into_inner()
            .outcome(),
        O::Stale
    );
    let err = c
        .get_workspace(env.service(pb::GetWorkspaceRequest {
            clerk_org_id: "org_a".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // A delete that overtakes the creation also wins.
    c.delete_workspace(env.service(delete_ws("d3", 50, "org_z")))
        .await
        .unwrap();
    assert_eq!(
        c.upsert_workspace(env.service(upsert_ws("e4", 10, "org_z", "Z")))
            .await
            .unwrap()
            .into_inner()
            .outcome(),
        O::Stale
    );
    env.purges_done().await;
    assert_eq!(env.count("workspaces").await, 0);
    assert_eq!(env.count("channels").await, 0);
}

#[tokio::test]
async fn memberships_may_arrive_before_their_organization() {
    let env = start_with(false).await;
    let mut c = env.client().await;
    let r = c
        .upsert_membership(env.service(membership("m1", 5, "org_a", "user_1", "admin")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), O::Applied);
    c.upsert_membership(env.service(membership("m2", 6, "org_a", "user_2", "basic_member")))
        .await
        .unwrap();
    c.upsert_workspace(env.service(upsert_ws("w1", 1, "org_a", "Acme")))
        .await
        .unwrap();
    assert_eq!(
        members(&env, "org_a").await,
        vec![
            ("user_1".to_string(), "org:admin".to_string()),
            ("user_2".to_string(), "org:member".to_string())
        ]
    );
}

#[tokio::test]
async fn membership_changes_follow_source_order() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    let up = |e: &str, at: i64, role: &str| env.service(membership(e, at, "org_a", "user_1", role));
    let del = |e: &str, at: i64| {
        env.service(pb::DeleteMembershipCommand {
            event_id: e.into(),
            occurred_at: ts(T0 + at),
            clerk_org_id: "org_a".into(),
            clerk_user_id: "user_1".into(),
            ..Default::default()
        })
    };
    c.upsert_membership(up("a", 20, "org:admin")).await.unwrap();
    assert_eq!(
        c.upsert_membership(up("b", 10, "org:member"))
            .await
            .unwrap()
            .into_inner()
            .outcome(),
        O::Stale
    );
    assert_eq!(
        members(&env, "org_a").await,
        vec![("user_1".to_string(), "org:admin".to_string())]
    );
    assert_eq!(
        c.delete_membership(del("c", 30))
            .await
            .unwrap()
            .into_inner()
            .outcome(),
        O::Applied
    );
    assert!(members(&env, "org_a").await.is_empty());
    // The late update from before the delete does not bring the member back...
    assert_eq!(
        c.upsert_membership(up("d", 25, "org:member"))
            .await
            .unwrap()
            .into_inner()
            .outcome(),
        O::Stale
    );
    assert!(members(&env, "org_a").await.is_empty());
    // ...a new invitation after it does.
    assert_eq!(
        c.upsert_membership(up("e", 40, "org:billing"))
            .await
            .unwrap()
            .into_inner()
            .outcome(),
        O::Applied
    );
    assert_eq!(
        members(&env, "org_a").await,
        vec![("user_1".to_string(), "org:billing".to_string())]
    );
}

#[tokio::test]
async fn a_removed_user_loses_memberships_and_receipts_but_messages_stay() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    c.upsert_membership(env.service(membership("m1", 5, "org_a", "user_1", "org:member")))
        .await
        .unwrap();
    let general = &c
        .list_channels(env.service(pb::ListChannelsRequest {
            clerk_org_id: "org_a".into(),
            page_size: 0,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .channels[0];
    let msg = c
        .post_message(env.member(
            "user_1",
            "org_a",
            pb::PostMessageRequest {
                channel_id: general.id.clone(),
                body: "hi".into(),
                author_clerk_id: String::new(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    c.mark_channel_read(env.member(
        "user_1",
        "org_a",
        pb::MarkChannelReadRequest {
            channel_id: general.id.clone(),
            message_id: String::new(),
        },
    ))
    .await
    .unwrap();
    let r = c
        .remove_user(env.service(pb::RemoveUserCommand {
            event_id: "u1".into(),
            occurred_at: ts(T0 + 9),
            clerk_user_id: "user_1".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.outcome(), r.memberships_removed, r.read_receipts_removed),
        (O::Applied, 1, 1)
    );
    assert!(members(&env, "org_a").await.is_empty());
    let msgs = c
        .list_messages(env.service(pb::ListMessagesRequest {
            channel_id: general.id.clone(),
            page_size: 0,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        (msgs[0].id.as_str(), msgs[0].author_deleted),
        (msg.id.as_str(), true)
    );
    // Late membership events for the removed user are stale.
    let late = c
        .upsert_membership(env.service(membership("m2", 50, "org_a", "user_1", "org:admin")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(late.outcome(), O::Stale);
    assert!(members(&env, "org_a").await.is_empty());
}

#[tokio::test]
async fn sync_commands_refuse_users_and_bad_input_writes_nothing() {
    let env = start_with(false).await;
    let mut c = env.client().await;
    let err = c
        .upsert_workspace(env.admin("user_1", "org_a", upsert_ws("x", 1, "org_a", "A")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let bad = vec![
        upsert_ws("", 1, "org_a", "A"),
        upsert_ws("x", 1, "user_a", "A"),
        upsert_ws("x", 1, "org_a", ""),
        upsert_ws("x", 1, "org_a", &"n".repeat(300)),
        pb::UpsertWorkspaceCommand {
            occurred_at: None,
            ..upsert_ws("x", 1, "org_a", "A")
        },
        pb::UpsertWorkspaceCommand {
            owner_clerk_id: "bob".into(),
            ..upsert_ws("x", 1, "org_a", "A")
        },
    ];
    for cmd in bad {
        let err = c
            .upsert_workspace(env.service(cmd.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{cmd:?}");
    }
    let err = c
        .upsert_membership(env.service(membership("x", 1, "org_a", "user_1", "")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(env.count("workspaces").await, 0);
    assert_eq!(env.count("memberships").await, 0);
    // Event id "x" was never recorded.
    let ok = c
        .upsert_workspace(env.service(upsert_ws("x", 1, "org_a", "A")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.outcome(), O::Applied);
}

/// A sync command's time more than a day ahead of the service's clock, or malformed, is
/// refused naming the field, and writes nothing: stored, a revocation dated 10 years ahead
/// would refuse every token of the user for 10 years (the latest time is kept), a far-future
/// `occurred_at` would make every later state stale, and a malformed optional time must not
/// read as "unknown".
#[tokio::test]
async fn sync_times_in_the_future_or_malformed_are_refused_and_write_nothing() {
    let env = start_with(false).await;
    let mut c = env.client().await;
    let now = token_auth::signing::now_secs();
    let decade = ts(now + 10 * 365 * 86_400);
    let nanos = |nanos| {
        Some(prost_types::Timestamp {
            seconds: now - 60,
            nanos,
        })
    };
    let expect_refused = |says: &str, refused: Option<tonic::Status>| {
        let err = refused.expect("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{says}: {err:?}");
        assert!(err.message().starts_with(says), "{says}: {err:?}");
    };
    let revoke = |revoked_at| pb::RevokeUserTokensCommand {
        event_id: "t-revoke".into(),
        revoked_at,
        clerk_user_id: "user_t".into(),
        ..Default::default()
    };
    expect_refused(
        "revoked_at is in the future",
        c.revoke_user_tokens(env.service(revoke(decade)))
            .await
            .err(),
    );
    expect_refused(
        "revoked_at.nanos must be",
        c.revoke_user_tokens(env.service(revoke(nanos(2_000_000_000))))
            .await
            .err(),
    );
    assert_eq!(env.count("user_revocations").await, 0);

    let upsert = || upsert_ws("t-ws", now - 60 - T0, "org_t", "T");
    for (says, cmd) in [
        (
            "occurred_at is in the future",
            pb::UpsertWorkspaceCommand {
                occurred_at: decade,
                ..upsert()
            },
        ),
        (
            "event_time is in the future",
            pb::UpsertWorkspaceCommand {
                event_time: decade,
                ..upsert()
            },
        ),
        (
            "created_at.nanos must be",
            pb::UpsertWorkspaceCommand {
                created_at: nanos(2_000_000_000),
                ..upsert()
            },
        ),
    ] {
        expect_refused(says, c.upsert_workspace(env.service(cmd)).await.err());
    }
    let member = || membership("t-m", now - 60 - T0, "org_t", "user_t", "org:member");
    for (says, cmd) in [
        (
            "event_time.nanos must be",
            pb::UpsertMembershipCommand {
                event_time: nanos(-1),
                ..member()
            },
        ),
        (
            "membership_created_at is in the future",
            pb::UpsertMembershipCommand {
                membership_created_at: decade,
                ..member()
            },
        ),
    ] {
        expect_refused(says, c.upsert_membership(env.service(cmd)).await.err());
    }
    assert_eq!(env.count("workspaces").await, 0);
    assert_eq!(env.count("memberships").await, 0);

    // Deletes: a malformed time was read as "unknown" and the deletion applied.
    c.upsert_workspace(env.service(upsert_ws("t-held", 1, "org_held", "Held")))
        .await
        .unwrap();
    let delete = pb::DeleteWorkspaceCommand {
        occurred_at: nanos(2_000_000_000),
        ..delete_ws("t-del", 2, "org_held")
    };
    expect_refused(
        "occurred_at.nanos must be",
        c.delete_workspace(env.service(delete)).await.err(),
    );
    let remove = |occurred_at| pb::RemoveUserCommand {
        event_id: "t-rm".into(),
        occurred_at,
        clerk_user_id: "user_t".into(),
        ..Default::default()
    };
    expect_refused(
        "occurred_at.nanos must be",
        c.remove_user(env.service(remove(nanos(2_000_000_000))))
            .await
            .err(),
    );
    expect_refused(
        "occurred_at is in the future",
        c.remove_user(env.service(remove(decade))).await.err(),
    );
    assert_eq!(env.count("workspace_tombstones").await, 0);
    assert_eq!(env.count("removed_users").await, 0);

    // No event id was recorded: each applies now.
    let applied = c
        .revoke_user_tokens(env.service(revoke(ts(now - 60))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.outcome(), O::Applied);
    let applied = c
        .upsert_workspace(env.service(upsert()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.outcome(), O::Applied);
    let applied = c
        .remove_user(env.service(remove(ts(now - 60))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.outcome(), O::Applied);
}

/// When something was created has no floor: Clerk lets an import set a user's or an
/// organization's `created_at` to any past time, the epoch included, and their webhooks apply.
#[tokio::test]
async fn created_times_from_long_ago_apply() {
    let env = start_with(false).await;
    let mut c = env.client().await;
    let epoch = Some(prost_types::Timestamp::default());
    c.upsert_workspace(env.service(pb::UpsertWorkspaceCommand {
        created_at: epoch,
        ..upsert_ws("t-old-ws", 1, "org_old", "Old")
    }))
    .await
    .expect("an organization created at the epoch");
    c.upsert_membership(env.service(pb::UpsertMembershipCommand {
        membership_created_at: ts(800_000_000),
        ..membership("t-old-m", 2, "org_old", "user_old", "org:member")
    }))
    .await
    .expect("a membership created in 1995");
    assert_eq!(env.count("memberships").await, 1);
}
