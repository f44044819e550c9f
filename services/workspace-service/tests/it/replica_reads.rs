//! Read RPCs on a streaming replica (DATABASE_READ_URL): with replay paused on the standby, a
//! caller reads its own write (the read waits for the replica, then goes to the primary),
//! another caller reads the replica's older state while its lag is within DB_READ_MAX_LAG_MS,
//! and once the lag passes it, every read goes to the primary. A watch's backlog read on a
//! replica that lacks changes the primary has is read again on the primary.

use crate::support;

use ephemeral_postgres::{PgCluster, PgClusterOptions, TestDatabases, app_role_url, with_database};
use std::time::Duration;
use support::{Env, eventually};
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::workspace_event::Event;

/// The lag beyond which reads go to the primary, in this test.
const MAX_LAG_MS: u64 = 3_000;

async fn channel_names(env: &Env, user: &str, org: &str) -> Vec<String> {
    try_channel_names(env, user, org).await.unwrap()
}

async fn try_channel_names(env: &Env, user: &str, org: &str) -> Result<Vec<String>, tonic::Status> {
    let mut c = env.client().await;
    c.list_channels(env.member(
        user,
        org,
        pb::ListChannelsRequest {
            clerk_org_id: org.into(),
            page_size: 0,
            page_token: String::new(),
        },
    ))
    .await
    .map(|r| {
        r.into_inner()
            .channels
            .into_iter()
            .map(|c| c.name)
            .collect()
    })
}

async fn watch_workspace(
    env: &Env,
    user: &str,
    org: &str,
    token: &str,
) -> tonic::Streaming<pb::WorkspaceEvent> {
    env.client()
        .await
        .watch_workspace(env.member(
            user,
            org,
            pb::WatchWorkspaceRequest {
                clerk_org_id: org.into(),
                resume_token: token.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn reads(env: &Env, target: &str, reason: &str) -> f64 {
    env.metric(&format!(
        "db_reads_total{{target=\"{target}\",reason=\"{reason}\"}}"
    ))
    .await
    .unwrap_or(0.0)
}

#[tokio::test]
async fn read_rpcs_use_the_replica_within_its_lag_and_callers_read_their_writes() {
    let cluster = tokio::task::spawn_blocking(|| {
        let c = PgCluster::start(PgClusterOptions::default()).unwrap();
        c.wait_ready(Duration::from_secs(30)).unwrap();
        c
    })
    .await
    .unwrap();
    let dbs = TestDatabases::on_cluster(cluster);
    let db = dbs
        .create("workspace", |url| async move {
            workspace_service::migrate(&url, &service_runtime::DbTls::system_roots())
                .await
                .map(|_| ())
        })
        .await
        .unwrap();
    let name = db.name().to_owned();
    // The standby copies the primary (its test database included) and streams from it.
    let standby =
        PgCluster::start_standby(dbs.cluster().unwrap(), PgClusterOptions::default()).unwrap();
    standby.wait_ready(Duration::from_secs(30)).unwrap();
    let standby_admin = standby.url("postgres");
    let standby_db = with_database(&standby.url("postgres"), &name);
    let env = support::start_on(db, false, |cfg| {
        cfg.service.replica.database_read_url = Some(app_role_url(&standby_db).into());
        cfg.service.replica.db_read_max_lag_ms = MAX_LAG_MS;
        cfg.service.replica.db_read_your_writes_wait_ms = 200;
    })
    .await;
    env.workspace("org_a").await;

    // The replica serves once its lag is measured and it has replayed the workspace (until
    // then it may answer that the workspace is not synced yet).
    eventually(
        "the replica serves reads",
        Duration::from_secs(20),
        || async {
            let before = reads(&env, "replica", "fresh").await;
            try_channel_names(&env, "user_b", "org_a")
                .await
                .is_ok_and(|n| n == ["general"])
                && reads(&env, "replica", "fresh").await > before
        },
    )
    .await;

    // A workspace watch's position before the writes below.
    let token = {
        let mut w = watch_workspace(&env, "user_b", "org_a", "").await;
        let first = w.message().await.unwrap().unwrap();
        assert!(matches!(first.event, Some(Event::CaughtUp(_))));
        first.resume_token
    };

    // A write the replica has replayed, so its last replayed transaction is recent, then
    // replay paused.
    env.workspace("org_z").await;
    eventually("the standby replays", Duration::from_secs(20), || async {
        service_harness::scalar(
            &standby_db,
            "SELECT count(*) FROM workspaces WHERE clerk_org_id = 'org_z'",
        )
        .await
            == 1
    })
    .await;
    service_harness::execute(&standby_admin, "SELECT pg_wal_replay_pause()").await;

    // (a) A caller's write, then its read: it sees its write (a user's read is decided and
    // served on the primary; a service's waits for the replica, which has not replayed the
    // write, then goes to the primary).
    let mut c = env.client().await;
    c.create_channel(env.member(
        "user_a",
        "org_a",
        pb::CreateChannelRequest {
            clerk_org_id: "org_a".into(),
            name: "alpha".into(),
        },
    ))
    .await
    .unwrap();
    // A user's read after its write reads past the access cache, so the primary decides its
    // access and serves it.
    let own_before = reads(&env, "primary", "access").await;
    assert_eq!(
        channel_names(&env, "user_a", "org_a").await,
        ["general", "alpha"],
        "the writer reads its write"
    );
    assert!(reads(&env, "primary", "access").await > own_before);
    // A service caller too (the gateway's commands): per subject.
    c.upsert_workspace(env.service(support::upsert_ws("create-org_b", 1, "org_b", "Beta")))
        .await
        .unwrap();
    let own_before = reads(&env, "primary", "own_write").await;
    let ws = c
        .get_workspace(env.service(pb::GetWorkspaceRequest {
            clerk_org_id: "org_b".into(),
        }))
        .await
        .expect("the service reads the workspace it just wrote")
        .into_inner();
    assert_eq!(ws.workspace.unwrap().name, "Beta");
    assert!(reads(&env, "primary", "own_write").await > own_before);

    // (b) Another caller, within the lag limit: the replica serves it, as of before the write.
    let fresh_before = reads(&env, "replica", "fresh").await;
    assert_eq!(
        channel_names(&env, "user_b", "org_a").await,
        ["general"],
        "another caller reads the replica (replay paused)"
    );
    assert!(reads(&env, "replica", "fresh").await > fresh_before);
    let lag = env.metric("db_replica_lag_seconds").await.unwrap();
    assert!(lag < MAX_LAG_MS as f64 / 1000.0, "lag {lag}");

    // (b') A member removed meanwhile is refused at once, though the replica has not
    // replayed the removal: an access the cache cannot answer is decided on the primary.
    try_channel_names(&env, "user_r", "org_a")
        .await
        .expect("a member reads");
    let (decided, lagging) = (
        reads(&env, "primary", "access").await,
        reads(&env, "primary", "lagging").await,
    );
    let later = token_auth::signing::now_secs() + 2;
    c.delete_membership(env.service(pb::DeleteMembershipCommand {
        event_id: "remove-user_r".into(),
        occurred_at: support::ts(later),
        clerk_org_id: "org_a".into(),
        clerk_user_id: "user_r".into(),
        event_time: support::ts(later),
        ..Default::default()
    }))
    .await
    .unwrap();
    let refused = try_channel_names(&env, "user_r", "org_a")
        .await
        .expect_err("the removed member is refused while the replica lacks the removal");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(reads(&env, "primary", "access").await > decided);
    assert_eq!(
        reads(&env, "primary", "lagging").await,
        lagging,
        "the replica was still within its lag: the refusal was the access check's"
    );
    // A watch resumed from before the write: its backlog read on the replica lacks the
    // channel the primary's log head counts, so that backlog is read on the primary.
    let mut w = watch_workspace(&env, "user_b", "org_a", &token).await;
    let mut heard = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("the backlog ends with caught_up")
            .unwrap()
            .unwrap();
        match e.event {
            Some(Event::CaughtUp(_)) => break,
            Some(Event::ChannelCreated(c)) => heard.push(c.name),
            _ => {}
        }
    }
    assert_eq!(
        heard,
        ["alpha"],
        "the backlog has the write the replica lacks"
    );
    drop(w);

    // (c) Once the lag passes DB_READ_MAX_LAG_MS, the primary serves everyone.
    eventually(
        "reads go to the primary once the replica lags",
        Duration::from_secs(20),
        || async { channel_names(&env, "user_b", "org_a").await == ["general", "alpha"] },
    )
    .await;
    assert!(reads(&env, "primary", "lagging").await > 0.0);
    assert!(env.metric("db_replica_lag_seconds").await.unwrap() > MAX_LAG_MS as f64 / 1000.0);

    // Replay resumed: the replica catches up and serves again.
    service_harness::execute(&standby_admin, "SELECT pg_wal_replay_resume()").await;
    eventually(
        "the replica serves again",
        Duration::from_secs(20),
        || async {
            let before = reads(&env, "replica", "fresh").await;
            channel_names(&env, "user_b", "org_a").await == ["general", "alpha"]
                && reads(&env, "replica", "fresh").await > before
        },
    )
    .await;
    env.server.stop().await.unwrap();
    drop(standby);
    drop(dbs);
}
