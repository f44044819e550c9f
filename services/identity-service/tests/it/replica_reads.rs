//! Reads on a streaming replica (DATABASE_READ_URL): with replay paused on the standby, a
//! caller reads its own write (StoreUser, then GetCurrentUser; a service's UpsertUser, then
//! GetUser), another caller reads the replica's older state while its lag is within
//! DB_READ_MAX_LAG_MS, and past it the primary answers.

use crate::support;

use ephemeral_postgres::{PgCluster, PgClusterOptions, TestDatabases, app_role_url, with_database};
use service_harness::eventually;
use std::time::Duration;
use support::Env;
use tonic::Code;
use vbase_proto::identity::v1 as pb;

/// The lag beyond which reads go to the primary, in this test.
const MAX_LAG_MS: u64 = 6_000;

async fn get_user(env: &Env, caller: &str, id: &str) -> Result<pb::User, Code> {
    env.client()
        .await
        .get_user(env.user(
            caller,
            pb::GetUserRequest {
                clerk_id: id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().user.unwrap())
        .map_err(|s| s.code())
}

async fn store(env: &Env, user: &str) {
    env.client()
        .await
        .store_user(env.user(user, pb::StoreUserRequest {}))
        .await
        .unwrap();
}

/// A primary with a streaming standby, and the service reading from the standby.
struct Replicated {
    env: Env,
    standby: PgCluster,
    /// The standby's admin URL.
    standby_admin: String,
    /// The standby's copy of the test database.
    standby_db: String,
    dbs: TestDatabases,
}

/// Starts [`Replicated`], the service's configuration changed by `tweak` after the replica's.
async fn replicated(tweak: impl FnOnce(&mut identity_service::Config)) -> Replicated {
    let cluster = tokio::task::spawn_blocking(|| {
        let c = PgCluster::start(PgClusterOptions::default()).unwrap();
        c.wait_ready(Duration::from_secs(30)).unwrap();
        c
    })
    .await
    .unwrap();
    let dbs = TestDatabases::on_cluster(cluster);
    let db = dbs
        .create("identity", |url| async move {
            identity_service::migrate(&url, &service_runtime::DbTls::system_roots())
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
    let env = support::start_on(db, |cfg| {
        cfg.service.replica.database_read_url = Some(app_role_url(&standby_db).into());
        cfg.service.replica.db_read_max_lag_ms = MAX_LAG_MS;
        cfg.service.replica.db_read_your_writes_wait_ms = 200;
        tweak(cfg);
    })
    .await;
    Replicated {
        env,
        standby,
        standby_admin,
        standby_db,
        dbs,
    }
}

/// Waits until the standby has replayed `user`'s row.
async fn replayed(standby_db: &str, user: &str) {
    eventually("the standby replays", Duration::from_secs(20), || async {
        service_harness::scalar(
            standby_db,
            &format!("SELECT count(*) FROM users WHERE clerk_id = '{user}'"),
        )
        .await
            == 1
    })
    .await;
}

#[tokio::test]
async fn reads_use_the_replica_within_its_lag_and_callers_read_their_writes() {
    let Replicated {
        env,
        standby,
        standby_admin,
        standby_db,
        dbs,
    } = replicated(|_| {}).await;

    // A write the standby has replayed, so its last replayed transaction is recent, then
    // replay paused.
    store(&env, "user_t").await;
    replayed(&standby_db, "user_t").await;
    // Another process of the service (as a load balancer would pick it), its lag sampler
    // running before replay stops.
    let mut other_config = support::config(env.db.url(), &env.issuers);
    other_config.service.replica.database_read_url = Some(app_role_url(&standby_db).into());
    other_config.service.replica.db_read_max_lag_ms = MAX_LAG_MS;
    other_config.service.replica.db_read_your_writes_wait_ms = 200;
    let other = support::start_server(other_config).await;
    let mut other_client =
        vbase_proto::identity::v1::identity_service_client::IdentityServiceClient::new(
            other.channel().await,
        );
    tokio::time::sleep(Duration::from_secs(1)).await;
    service_harness::execute(&standby_admin, "SELECT pg_wal_replay_pause()").await;

    // (a) StoreUser, then the same user's GetCurrentUser: it reads its write.
    store(&env, "user_a").await;
    let me = env
        .client()
        .await
        .get_current_user(env.user("user_a", pb::GetCurrentUserRequest {}))
        .await
        .expect("the writer reads its write")
        .into_inner();
    assert_eq!(me.user.unwrap().clerk_id, "user_a");
    // A service caller's write, then its read (per subject).
    let upsert = pb::UpsertUserCommand {
        event_id: "msg_z".into(),
        occurred_at: support::ts(1_700_000_100),
        clerk_id: "user_z".into(),
        name: "Zed".into(),
        email: "zed@example.com".into(),
        image_url: "https://img.clerk.com/zed".into(),
        created_at: support::ts(1_700_000_000),
        event_time: None,
        ..Default::default()
    };
    env.client()
        .await
        .upsert_user(env.service(upsert))
        .await
        .unwrap();
    let z = env
        .client()
        .await
        .get_user(env.service(pb::GetUserRequest {
            clerk_id: "user_z".into(),
        }))
        .await
        .expect("the service reads the user it just wrote");
    assert_eq!(z.into_inner().user.unwrap().name, "Zed");

    // (a') Through the other process: a read that carries the write's position (x-vbase-lsn,
    // from the write's answer) sees the write; one that does not reads the replica's older
    // state (within DB_READ_MAX_LAG_MS). (The caller's own row, which decides its access, is
    // read on the primary: `a_deletion_the_replica_has_not_replayed_refuses_the_callers_token`.)
    let stored = env
        .client()
        .await
        .store_user(env.user("user_c", pb::StoreUserRequest {}))
        .await
        .unwrap();
    let lsn = stored
        .metadata()
        .get(service_runtime::read_after::LSN_METADATA)
        .expect("a write's answer says where it committed")
        .clone();
    let of_c = || {
        env.user(
            "user_q",
            pb::GetUserRequest {
                clerk_id: "user_c".into(),
            },
        )
    };
    let elsewhere = other_client.get_user(of_c()).await;
    assert_eq!(
        elsewhere.map(|_| ()).map_err(|s| s.code()),
        Err(Code::NotFound),
        "without the position, another process reads the replica"
    );
    let mut carried = of_c();
    carried
        .metadata_mut()
        .insert(service_runtime::read_after::LSN_METADATA, lsn);
    let c = other_client
        .get_user(carried)
        .await
        .expect("with the position, another process reads the write");
    assert_eq!(c.into_inner().user.unwrap().clerk_id, "user_c");
    let mut bad = env.user("user_c", pb::GetCurrentUserRequest {});
    bad.metadata_mut().insert(
        service_runtime::read_after::LSN_METADATA,
        "not-a-position".parse().unwrap(),
    );
    assert_eq!(
        other_client.get_current_user(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    other.stop().await.unwrap();

    // (b) Another caller, within the lag limit, reads the replica: not yet there.
    store(&env, "user_x").await;
    assert_eq!(
        get_user(&env, "user_b", "user_x").await.err(),
        Some(Code::NotFound),
        "another caller reads the replica (replay paused)"
    );

    // (c) Past DB_READ_MAX_LAG_MS, the primary answers.
    eventually(
        "reads go to the primary once the replica lags",
        Duration::from_secs(20),
        || async { get_user(&env, "user_b", "user_x").await.is_ok() },
    )
    .await;

    service_harness::execute(&standby_admin, "SELECT pg_wal_replay_resume()").await;
    env.server.stop().await.unwrap();
    drop(standby);
    drop(dbs);
}

/// A caller that sends the largest position (`x-vbase-lsn: FFFFFFFF/FFFFFFFF`, which no replica
/// replays) waits DB_READ_YOUR_WRITES_WAIT_MS and gets its answer from the primary; it does not
/// hold up another caller's lookup, even with every lookup slot busy with its own calls.
#[tokio::test]
async fn a_forged_position_does_not_delay_other_callers_lookups() {
    const WAIT: Duration = Duration::from_millis(2_000);
    let Replicated {
        env,
        standby,
        standby_db,
        dbs,
        ..
    } = replicated(|cfg| {
        cfg.service.replica.db_read_your_writes_wait_ms = WAIT.as_millis() as u64;
        cfg.lookup_slots = 1;
    })
    .await;
    store(&env, "user_t").await;
    store(&env, "user_o").await;
    replayed(&standby_db, "user_o").await;

    let forged = |i: usize| {
        let env = &env;
        async move {
            let mut req = env.user(
                &format!("user_f{i}"),
                pb::GetUserRequest {
                    clerk_id: "user_t".into(),
                },
            );
            req.metadata_mut().insert(
                service_runtime::read_after::LSN_METADATA,
                "FFFFFFFF/FFFFFFFF".parse().unwrap(),
            );
            let started = std::time::Instant::now();
            let user = env.client().await.get_user(req).await;
            (
                user.map(|r| r.into_inner().user.unwrap()),
                started.elapsed(),
            )
        }
    };
    let other = async {
        // Once the forged calls hold the lookup slot.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let user = get_user(&env, "user_b", "user_o").await;
        (user, started.elapsed())
    };
    let (forgers, (other_user, other_took)) =
        tokio::join!(futures::future::join_all((0..3).map(forged)), other);
    assert_eq!(
        other_user.expect("the other caller's user").clerk_id,
        "user_o"
    );
    assert!(
        other_took < WAIT / 2,
        "another caller's cache-missing GetUser took {other_took:?} (the forged wait is {WAIT:?})"
    );
    let mut slowest = Duration::ZERO;
    for (user, took) in forgers {
        let user = user.expect("the forging caller still gets its answer");
        assert_eq!(user.clerk_id, "user_t");
        assert!(
            took >= WAIT,
            "the forged position waited {took:?}, then read the primary"
        );
        slowest = slowest.max(took);
    }
    // Positioned lookups take at most LOOKUP_SLOTS (1) connections at once: the three waited
    // one after another, not side by side on three connections.
    assert!(
        slowest >= 3 * WAIT,
        "the forged lookups ran side by side: the slowest took {slowest:?}"
    );

    env.server.stop().await.unwrap();
    drop(standby);
    drop(dbs);
}

/// Whether a caller's token is admitted is decided on the primary's row, never the replica's:
/// a user deleted while the replica lags (replay paused, still live there) is refused at once,
/// by every call, with the user cache off (every lookup a miss).
#[tokio::test]
async fn a_deletion_the_replica_has_not_replayed_refuses_the_callers_token() {
    let Replicated {
        env,
        standby,
        standby_admin,
        standby_db,
        dbs,
    } = replicated(|cfg| cfg.user_cache_bytes = 0).await;
    store(&env, "user_o").await;
    store(&env, "user_d").await;
    replayed(&standby_db, "user_o").await;
    replayed(&standby_db, "user_d").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    service_harness::execute(&standby_admin, "SELECT pg_wal_replay_pause()").await;

    let mut c = env.client().await;
    let deleted = pb::DeleteUserCommand {
        event_id: "deleted-user_d".into(),
        occurred_at: support::ts(chrono::Utc::now().timestamp()),
        clerk_id: "user_d".into(),
        ..Default::default()
    };
    c.delete_user(env.service(deleted)).await.unwrap();
    let live_on_replica =
        "SELECT count(*) FROM users WHERE clerk_id = 'user_d' AND deleted_at IS NULL";
    assert_eq!(
        service_harness::scalar(&standby_db, live_on_replica).await,
        1
    );

    assert_eq!(
        get_user(&env, "user_d", "user_o").await.unwrap_err(),
        Code::PermissionDenied
    );
    let me = c
        .get_current_user(env.user("user_d", pb::GetCurrentUserRequest {}))
        .await
        .unwrap_err();
    assert_eq!(me.code(), Code::PermissionDenied, "{me:?}");
    // Another caller still reads the replica.
    assert_eq!(
        get_user(&env, "user_o", "user_o").await.unwrap().clerk_id,
        "user_o"
    );

    service_harness::execute(&standby_admin, "SELECT pg_wal_replay_resume()").await;
    env.server.stop().await.unwrap();
    drop(standby);
    drop(dbs);
}
