//! The change log behind the watches: no deleted or pre-edit text is replayed, the prune never
//! leaves a silent gap after a resume token, and removals that share workspaces never deadlock
//! on the workspaces' numbering.

use crate::support::*;
use crate::watch::{channel, next, post, watch, what};
use service_harness::RunningServer;
use std::time::Duration;
use tonic::Code;
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::channel_event::Event;

/// Everything a watch resumed after `token` delivers up to `caught_up`.
async fn resumed(env: &Env, org: &str, ch: &str, token: &str) -> Vec<pb::ChannelEvent> {
    let mut s = watch(env, "user_b", org, ch, token).await;
    let mut got = Vec::new();
    loop {
        let e = next(&mut s).await;
        if what(&e) == "caught up" {
            return got;
        }
        got.push(e);
    }
}

/// The change number a resume token names.
fn seq(token: &str) -> i64 {
    token.rsplit('.').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_resumed_watch_gets_no_deleted_or_pre_edit_text() {
    let env = start_with(false).await;
    let ch = channel(&env, "org_txt", "live").await;
    let mut w = watch(&env, "user_b", "org_txt", &ch, "").await;
    let start = next(&mut w).await.resume_token;
    let gone = post(&env, "org_txt", &ch, "a secret, deleted later").await;
    let edited = post(&env, "org_txt", &ch, "a first draft").await;
    let mut c = env.client().await;
    c.edit_message(env.member(
        "user_a",
        "org_txt",
        pb::EditMessageRequest {
            message_id: edited.clone(),
            body: "the final text".into(),
        },
    ))
    .await
    .unwrap();
    c.delete_message(env.member(
        "user_a",
        "org_txt",
        pb::DeleteMessageRequest {
            message_id: gone.clone(),
        },
    ))
    .await
    .unwrap();
    // The live watcher heard each change as it happened.
    let live: Vec<String> = [next(&mut w).await, next(&mut w).await]
        .iter()
        .map(what)
        .collect();
    assert_eq!(
        live,
        ["posted a secret, deleted later", "posted a first draft"]
    );

    // Resumed from before all of it: every change, in order, with no old text.
    let events = resumed(&env, "org_txt", &ch, &start).await;
    let seen: Vec<String> = events.iter().map(what).collect();
    assert_eq!(
        seen,
        [
            "posted ".to_owned(),
            "posted ".into(),
            "edited the final text".into(),
            format!("deleted {gone}"),
        ]
    );
    match &events[0].event {
        Some(Event::MessagePosted(m)) => assert_eq!(m.id, gone, "the post is still there"),
        other => panic!("{other:?}"),
    }
    // Nor does the database keep it.
    for text in ["secret", "draft"] {
        let left = env
            .scalar(&format!(
                "SELECT count(*) FROM change_log WHERE position('{text}'::bytea IN payload) > 0"
            ))
            .await;
        assert_eq!(left, 0, "{text:?} is still in the change log");
    }
    // A second edit clears the first edit's text too.
    c.edit_message(env.member(
        "user_a",
        "org_txt",
        pb::EditMessageRequest {
            message_id: edited,
            body: "really final".into(),
        },
    ))
    .await
    .unwrap();
    let seen: Vec<String> = resumed(&env, "org_txt", &ch, &start)
        .await
        .iter()
        .map(what)
        .collect();
    assert_eq!(seen[2], "edited ", "{seen:?}");
    assert_eq!(seen[4], "edited really final", "{seen:?}");
}

#[tokio::test]
async fn the_prune_keeps_a_tokens_successor_or_refuses_the_token() {
    let env = start_with(false).await;
    let ch = channel(&env, "org_pr", "live").await;
    let mut w = watch(&env, "user_b", "org_pr", &ch, "").await;
    next(&mut w).await;
    for i in 1..=5 {
        post(&env, "org_pr", &ch, &format!("m{i}")).await;
    }
    let tokens: Vec<String> = {
        let mut t = Vec::new();
        for _ in 1..=5 {
            t.push(next(&mut w).await.resume_token);
        }
        t
    };
    let s: Vec<i64> = tokens.iter().map(|t| seq(t)).collect();
    // A change's time is its transaction's start: the third change began before the second
    // (it took its number later). Everything up to the first is old, and so is the third.
    env.sql(&format!(
        "UPDATE change_log SET recorded_at = now() - interval '2 hours'
          WHERE channel_id IS NULL OR seq <= {} OR seq = {}",
        s[0], s[2]
    ))
    .await;
    // A replica that keeps one hour prunes as it starts.
    let mut cfg = config(env.db.url(), &env.issuers, None);
    cfg.watch.change_log_retention_hours = 1;
    let pruning = RunningServer::start(|l, sd| workspace_service::run(cfg, l, sd)).await;
    eventually(
        "the old changes pruned",
        Duration::from_secs(10),
        || async {
            env.scalar(
                "SELECT count(*) FROM change_log WHERE recorded_at < now() - interval '1 hour'",
            )
            .await
                == 0
        },
    )
    .await;
    // After the first change: its successor (the second) went with the third, which was
    // older; the token is refused rather than answered from the fourth.
    let mut c = env.client().await;
    let refused = c
        .watch_channel(env.member(
            "user_b",
            "org_pr",
            pb::WatchChannelRequest {
                channel_id: ch.clone(),
                resume_token: tokens[0].clone(),
            },
        ))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // After the third: its successor is kept, and everything after it comes.
    let after_third: Vec<String> = resumed(&env, "org_pr", &ch, &tokens[2])
        .await
        .iter()
        .map(what)
        .collect();
    assert_eq!(after_third, ["posted m4", "posted m5"]);
    pruning.stop().await.unwrap();
}

/// Found by the soak: a purged workspace kept its `change_heads` row for good. Its last
/// change (the deletion, for watchers resuming) and its head go together once old enough; a
/// live workspace keeps its head.
#[tokio::test]
async fn a_purged_workspace_leaves_no_head_once_its_last_change_is_pruned() {
    let env = start_with(false).await;
    channel(&env, "org_gone", "live").await;
    channel(&env, "org_kept", "live").await;
    let mut c = env.client().await;
    c.delete_workspace(env.service(delete_ws("d-gone", 10, "org_gone")))
        .await
        .unwrap();
    env.purges_done().await;
    assert_eq!(env.count("change_heads").await, 2);
    env.sql("UPDATE change_log SET recorded_at = now() - interval '2 hours'")
        .await;
    let mut cfg = config(env.db.url(), &env.issuers, None);
    cfg.watch.change_log_retention_hours = 1;
    let pruning = RunningServer::start(|l, sd| workspace_service::run(cfg, l, sd)).await;
    eventually(
        "the old changes pruned",
        Duration::from_secs(10),
        || async { env.count("change_log").await == 0 },
    )
    .await;
    eventually(
        "the purged workspace's head gone",
        Duration::from_secs(10),
        || async { env.count("change_heads").await == 1 },
    )
    .await;
    let kept = env
        .scalar(
            "SELECT count(*) FROM change_heads h JOIN workspaces w ON w.id = h.workspace_id
              WHERE w.clerk_org_id = 'org_kept'",
        )
        .await;
    assert_eq!(kept, 1, "a live workspace keeps its numbering");
    pruning.stop().await.unwrap();
}

#[tokio::test]
async fn removals_of_users_sharing_ten_workspaces_at_once_never_deadlock() {
    let env = start_with(false).await;
    let mut c = env.client().await;
    let orgs: Vec<String> = (0..10).map(|i| format!("org_dl{i}")).collect();
    for org in &orgs {
        env.workspace(org).await;
    }
    // Pairs of users in all ten, the second of each pair joining in the opposite order.
    let pairs = 4;
    for p in 0..pairs {
        for i in 0..10 {
            for (user, org) in [
                (format!("user_x{p}"), &orgs[i]),
                (format!("user_y{p}"), &orgs[9 - i]),
            ] {
                c.upsert_membership(env.service(membership(
                    &format!("m-{user}-{org}"),
                    10,
                    org,
                    &user,
                    "org:member",
                )))
                .await
                .unwrap();
            }
        }
    }
    // Each pair's two removals at once.
    for p in 0..pairs {
        let remove = |user: String| {
            let env = &env;
            async move {
                env.client()
                    .await
                    .remove_user(env.service(pb::RemoveUserCommand {
                        event_id: format!("del-{user}"),
                        occurred_at: ts(T0 + 100),
                        clerk_user_id: user,
                        instance_id: String::new(),
                    }))
                    .await
            }
        };
        let (x, y) = tokio::join!(remove(format!("user_x{p}")), remove(format!("user_y{p}")));
        let (x, y) = (
            x.expect("no deadlock").into_inner(),
            y.expect("no deadlock").into_inner(),
        );
        assert_eq!((x.memberships_removed, y.memberships_removed), (10, 10));
    }
    // Every workspace heard each removal.
    let removed = env
        .scalar(
            "SELECT count(*) FROM change_log WHERE channel_id IS NULL
                AND position('user_x'::bytea IN payload) + position('user_y'::bytea IN payload) > 0",
        )
        .await;
    assert_eq!(
        removed,
        2 * 2 * 10 * pairs as i64,
        "joined and removed, in all ten"
    );
}

/// The migration that closes deleted workspaces' logs, and its undoing.
const CLOSED_HEADS: [&str; 2] = [
    include_str!("../../migrations/2026-12-08-000001_closed_change_heads/down.sql"),
    include_str!("../../migrations/2026-12-08-000001_closed_change_heads/up.sql"),
];

/// Workspaces deleted before deletions closed their logs get closed logs from the migration;
/// live ones keep theirs open.
#[tokio::test]
async fn the_migration_closes_the_logs_of_workspaces_already_deleted() {
    let env = start_with(false).await;
    channel(&env, "org_was", "live").await;
    channel(&env, "org_is", "live").await;
    // By workspace id: the purge may take the deleted workspace's row before the check (its
    // log's head stays).
    let id_of = async |org: &str| {
        let sql = format!("SELECT id::text FROM workspaces WHERE clerk_org_id = '{org}'");
        service_harness::strings(env.db.url(), &sql).await.remove(0)
    };
    let ids = [
        ("org_was", id_of("org_was").await),
        ("org_is", id_of("org_is").await),
    ];
    env.client()
        .await
        .delete_workspace(env.service(delete_ws("d-was", 10, "org_was")))
        .await
        .unwrap();
    env.sql(&CLOSED_HEADS.join("\n")).await;
    let closed = |org: &str| {
        let (_, id) = ids.iter().find(|(o, _)| *o == org).unwrap();
        format!("SELECT count(*) FROM change_heads WHERE closed AND workspace_id = '{id}'")
    };
    assert_eq!(
        env.scalar(&closed("org_was")).await,
        1,
        "the deleted one's is closed"
    );
    assert_eq!(
        env.scalar(&closed("org_is")).await,
        0,
        "a live one's stays open"
    );
}

/// The migration of the entries recorded before entries named their message.
const LEGACY_BODIES: &str =
    include_str!("../../migrations/2026-12-04-000002_change_log_legacy_bodies/up.sql");

/// Entries recorded before entries named their message: the migration names the message of
/// the newest entry of each message still there, and clears every other body (of a message
/// deleted or edited since); a later edit or delete then clears the named ones.
#[tokio::test]
async fn entries_from_before_message_ids_are_named_or_cleared() {
    let env = start_with(false).await;
    let ch = channel(&env, "org_old", "live").await;
    let mut w = watch(&env, "user_b", "org_old", &ch, "").await;
    let start = next(&mut w).await.resume_token;
    let kept = post(&env, "org_old", &ch, "kept text").await;
    let edited = post(&env, "org_old", &ch, "an old draft").await;
    let gone = post(&env, "org_old", &ch, "an old secret").await;
    // The entries as the version before message ids recorded them: no entry names its
    // message, so the edit and the delete below clear nothing, as that version did.
    let unnamed = "UPDATE change_log SET message_id = NULL";
    env.sql(unnamed).await;
    let mut c = env.client().await;
    let edit = |id: &str, body: &str| {
        env.member(
            "user_a",
            "org_old",
            pb::EditMessageRequest {
                message_id: id.into(),
                body: body.into(),
            },
        )
    };
    let delete = |id: &str| {
        env.member(
            "user_a",
            "org_old",
            pb::DeleteMessageRequest {
                message_id: id.into(),
            },
        )
    };
    c.edit_message(edit(&edited, "the final draft"))
        .await
        .unwrap();
    c.delete_message(delete(&gone)).await.unwrap();
    env.sql(unnamed).await;
    let holding = |text: &'static str| {
        let env = &env;
        async move {
            env.scalar(&format!(
                "SELECT count(*) FROM change_log WHERE position('{text}'::bytea IN payload) > 0"
            ))
            .await
        }
    };
    assert_eq!(holding("old secret").await, 1, "the fixture holds old text");

    env.sql(LEGACY_BODIES).await;
    for text in ["old draft", "old secret"] {
        assert_eq!(
            holding(text).await,
            0,
            "{text:?} is still in the change log"
        );
    }
    let seen: Vec<String> = resumed(&env, "org_old", &ch, &start)
        .await
        .iter()
        .map(what)
        .collect();
    assert_eq!(
        seen,
        [
            "posted kept text".to_owned(),
            "posted ".into(),
            "posted ".into(),
            "edited the final draft".into(),
            format!("deleted {gone}"),
        ]
    );
    // The named entries are cleared by the next edit or delete, as any other.
    c.delete_message(delete(&kept)).await.unwrap();
    c.edit_message(edit(&edited, "later")).await.unwrap();
    for text in ["kept text", "final draft"] {
        assert_eq!(
            holding(text).await,
            0,
            "{text:?} is still in the change log"
        );
    }
    // Run again, the migration changes nothing.
    env.sql(LEGACY_BODIES).await;
    assert_eq!(holding("later").await, 1);
}
