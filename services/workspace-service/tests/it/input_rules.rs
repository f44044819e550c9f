//! Text and time input at the gRPC edge: message bodies keep their lines, names refuse what a
//! reader cannot see or that reorders them, timestamps and page tokens out of their domain are
//! INVALID_ARGUMENT (never INTERNAL).

use crate::content::{general, post};
use crate::support;

use support::{start_with, ts};
use tonic::{Code, Status};
use vbase_proto::workspace::v1 as pb;

fn refused<T: std::fmt::Debug>(r: Result<tonic::Response<T>, Status>) -> String {
    let s = r.expect_err("refused");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    s.message().to_owned()
}

#[tokio::test]
async fn a_multi_line_message_posts_reads_back_unchanged_and_edits() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let ch = general(&env, "org_a").await;
    let mut c = env.client().await;
    let body = "Agenda:\n\t1. specs\r\n\t2. review\rend";
    let posted = c
        .post_message(env.member("user_1", "org_a", post(&ch.id, body)))
        .await
        .expect("a body with line breaks and tabs posts")
        .into_inner()
        .message
        .unwrap();
    assert_eq!(posted.body, body);
    let listed = c
        .list_messages(env.member(
            "user_2",
            "org_a",
            pb::ListMessagesRequest {
                channel_id: ch.id.clone(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].body, body, "read back unchanged");
    let edited_body = "line one\nline two\n\n\tindented";
    let edited = c
        .edit_message(env.member(
            "user_1",
            "org_a",
            pb::EditMessageRequest {
                message_id: posted.id.clone(),
                body: edited_body.into(),
            },
        ))
        .await
        .expect("a multi-line edit")
        .into_inner()
        .message
        .unwrap();
    assert_eq!(edited.body, edited_body);

    // Other control characters stay refused, in posts and in edits.
    let e = refused(
        c.post_message(env.member("user_1", "org_a", post(&ch.id, "ding\u{0007}")))
            .await,
    );
    assert!(
        e.contains("body must not contain control characters"),
        "{e}"
    );
    let e = refused(
        c.edit_message(env.member(
            "user_1",
            "org_a",
            pb::EditMessageRequest {
                message_id: posted.id,
                body: "a\u{001B}[2Jb".into(),
            },
        ))
        .await,
    );
    assert!(
        e.contains("body must not contain control characters"),
        "{e}"
    );
    assert_eq!(env.count("messages").await, 1);
}

#[tokio::test]
async fn invisible_or_reordering_names_are_refused() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    let room = |name: &str| {
        env.member(
            "user_1",
            "org_a",
            pb::CreateRoomRequest {
                clerk_org_id: "org_a".into(),
                kind: pb::RoomKind::Conference.into(),
                name: name.into(),
                request_id: String::new(),
            },
        )
    };
    for blank in ["\u{200B}", " \u{2060}\u{FEFF} ", "\u{3164}"] {
        let e = refused(c.create_room(room(blank)).await);
        assert!(e.starts_with("name must not be empty"), "{blank:?}: {e}");
    }
    let e = refused(c.create_room(room("report\u{202E}fdp.exe")).await);
    assert!(
        e.contains("name must not contain bidirectional control characters"),
        "{e}"
    );
    let e = refused(c.create_room(room("two\nlines")).await);
    assert!(
        e.contains("name must not contain control characters"),
        "{e}"
    );
    assert_eq!(env.count("rooms").await, 0);

    // Emoji sequences and right-to-left marks are names.
    let family = "👨\u{200D}👩\u{200D}👧 ❤\u{FE0F}";
    let created = c
        .create_room(room(family))
        .await
        .expect("an emoji ZWJ sequence is a name")
        .into_inner()
        .room
        .unwrap();
    assert_eq!(created.name, family);
    let e = refused(
        c.rename_room(env.admin(
            "user_1",
            "org_a",
            pb::RenameRoomRequest {
                room_id: created.id.clone(),
                name: "\u{2067}x".into(),
            },
        ))
        .await,
    );
    assert!(e.contains("bidirectional"), "{e}");

    // A meeting's title follows the same rules.
    let e = refused(
        c.schedule_meeting(env.member(
            "user_1",
            "org_a",
            pb::ScheduleMeetingRequest {
                room_id: created.id,
                title: "\u{200B}\u{200C}".into(),
                starts_at: ts(2_000_000_000),
                ends_at: ts(2_000_003_600),
                request_id: String::new(),
            },
        ))
        .await,
    );
    assert!(e.starts_with("title must not be empty"), "{e}");
}

#[tokio::test]
async fn a_meeting_time_with_nanos_outside_a_second_is_refused() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    let room = c
        .create_room(env.member(
            "user_1",
            "org_a",
            pb::CreateRoomRequest {
                clerk_org_id: "org_a".into(),
                kind: pb::RoomKind::Conference.into(),
                name: "Standup".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
    let sched = |starts_at, ends_at| {
        env.member(
            "user_1",
            "org_a",
            pb::ScheduleMeetingRequest {
                room_id: room.id.clone(),
                title: "Sync".into(),
                starts_at,
                ends_at,
                request_id: String::new(),
            },
        )
    };
    let e = refused(
        c.schedule_meeting(sched(at(2_000_000_000, -1), at(2_000_003_600, 0)))
            .await,
    );
    assert!(e.contains("starts_at.nanos must be 0..=999999999"), "{e}");
    let e = refused(
        c.schedule_meeting(sched(
            at(2_000_000_000, 0),
            at(2_000_003_600, 2_000_000_000),
        ))
        .await,
    );
    assert!(e.contains("ends_at.nanos must be 0..=999999999"), "{e}");
    // Less than a microsecond apart: the same time once stored (PostgreSQL keeps microseconds).
    let e = refused(
        c.schedule_meeting(sched(at(2_000_000_000, 1_000), at(2_000_000_000, 1_500)))
            .await,
    );
    assert!(e.contains("ends_at must be after starts_at"), "{e}");
    assert_eq!(env.count("meetings").await, 0);
    c.schedule_meeting(sched(at(2_000_000_000, 999_999_999), at(2_000_003_600, 0)))
        .await
        .expect("nanos within a second");
}

#[tokio::test]
async fn a_members_page_token_holding_nul_is_invalid_not_internal() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    // "AA" is one NUL byte in unpadded base64; "dXNlcl8AeA" is "user_\0x".
    for token in ["AA", "dXNlcl8AeA"] {
        let e = refused(
            c.list_members(env.service(pb::ListMembersRequest {
                clerk_org_id: "org_a".into(),
                page_size: 0,
                page_token: token.into(),
            }))
            .await,
        );
        assert!(e.contains("page_token"), "{token}: {e}");
    }
}

/// A sync command refused as invalid records nothing, its Clerk instance included: reconcile
/// trusts the instances the services recorded from applied webhooks (`ListClerkInstances`).
#[tokio::test]
async fn an_invalid_sync_command_records_no_clerk_instance() {
    let env = start_with(false).await;
    let mut c = env.client().await;
    let instance = || "ins_refused".to_owned();
    let answers = [
        c.upsert_workspace(env.service(pb::UpsertWorkspaceCommand {
            instance_id: instance(),
            event_id: String::new(),
            ..support::upsert_ws("e1", 1, "org_a", "Acme")
        }))
        .await
        .map(|_| ()),
        c.delete_workspace(env.service(pb::DeleteWorkspaceCommand {
            instance_id: instance(),
            clerk_org_id: "not an org".into(),
            ..Default::default()
        }))
        .await
        .map(|_| ()),
        c.upsert_membership(env.service(pb::UpsertMembershipCommand {
            instance_id: instance(),
            ..Default::default()
        }))
        .await
        .map(|_| ()),
        c.delete_membership(env.service(pb::DeleteMembershipCommand {
            instance_id: instance(),
            ..Default::default()
        }))
        .await
        .map(|_| ()),
        c.remove_user(env.service(pb::RemoveUserCommand {
            instance_id: instance(),
            ..Default::default()
        }))
        .await
        .map(|_| ()),
        c.revoke_user_tokens(env.service(pb::RevokeUserTokensCommand {
            instance_id: instance(),
            ..Default::default()
        }))
        .await
        .map(|_| ()),
    ];
    for answer in answers {
        let e = answer.expect_err("an invalid command is refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    assert_eq!(env.count("clerk_instances").await, 0);
    assert_eq!(env.count("workspaces").await, 0);
}

/// `FinishReconcile` checks the run's report before it forgets the run's candidates: a report
/// naming another run is refused and nothing is written; the run's own is recorded.
#[tokio::test]
async fn a_reconcile_report_naming_another_run_is_refused_before_anything_changes() {
    let env = start_with(false).await;
    let mut c = env.client().await;
    let run = uuid::Uuid::now_v7().to_string();
    let report = |run_id: String| vbase_proto::ops::v1::ReconcileRun {
        run_id,
        completed: true,
        ..Default::default()
    };
    let e = c
        .finish_reconcile(env.issuers.gateway(
            "workspace-service",
            pb::FinishReconcileRequest {
                run_id: run.clone(),
                run: Some(report(uuid::Uuid::now_v7().to_string())),
            },
        ))
        .await
        .expect_err("a report of another run");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains("run.run_id must be the run being finished"),
        "{e:?}"
    );
    assert_eq!(env.count("reconcile_runs").await, 0);
    c.finish_reconcile(env.issuers.gateway(
        "workspace-service",
        pb::FinishReconcileRequest {
            run_id: run.clone(),
            run: Some(report(run)),
        },
    ))
    .await
    .expect("the run's own report");
    assert_eq!(env.count("reconcile_runs").await, 1);
}
