//! Process-level behaviour: health follows the database, configuration errors are one clear line.

use crate::support;

use ephemeral_postgres::{PgCluster, PgClusterOptions};
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn status(addr: std::net::SocketAddr) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(channel);
    h.check(HealthCheckRequest {
        service: identity_service::SERVICE_NAME.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .status
}

async fn wait_for(addr: std::net::SocketAddr, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if status(addr).await == want as i32 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cluster of its own (the tests stop and start it), migrated, with the app role granted.
async fn migrated_cluster() -> (PgCluster, String) {
    let cluster = tokio::task::spawn_blocking(|| {
        let c = PgCluster::start(PgClusterOptions::default()).unwrap();
        c.wait_ready(Duration::from_secs(20)).unwrap();
        c
    })
    .await
    .unwrap();
    let url = cluster.url("postgres");
    identity_service::migrate(&url, &service_runtime::DbTls::system_roots())
        .await
        .unwrap();
    ephemeral_postgres::grant_app_role(&url).await.unwrap();
    (cluster, url)
}

#[tokio::test]
async fn health_follows_the_database_and_calls_fail_unavailable_meanwhile() {
    let (cluster, url) = migrated_cluster().await;
    let issuers = service_harness::Issuers::new().await;
    let server = support::start_server(support::config(&url, &issuers)).await;
    wait_for(server.addr, ServingStatus::Serving).await;

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.pause().unwrap();
        cluster
    })
    .await
    .unwrap();
    wait_for(server.addr, ServingStatus::NotServing).await;
    let mut c = vbase_proto::identity::v1::identity_service_client::IdentityServiceClient::new(
        server.channel().await,
    );
    let token = issuers.keys.token_for("identity-service");
    let err = c
        .get_user(support::bearer(
            vbase_proto::identity::v1::GetUserRequest {
                clerk_id: "user_a".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.resume().unwrap();
        cluster
    })
    .await
    .unwrap();
    wait_for(server.addr, ServingStatus::Serving).await;
    let r = c
        .get_user(support::bearer(
            vbase_proto::identity::v1::GetUserRequest {
                clerk_id: "user_a".into(),
            },
            &token,
        ))
        .await;
    assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
    server.stop().await.unwrap();
    drop(cluster);
}

/// Behind a pooler in transaction mode the service stores its session settings on its role
/// before it may serve. A pod (re)started while the database is down must not exit for that
/// (it would crash-loop): it serves health, NOT_SERVING, and turns SERVING once the database is
/// back and the settings are stored.
#[tokio::test]
async fn in_transaction_mode_a_start_during_an_outage_waits_for_the_database() {
    let (cluster, url) = migrated_cluster().await;
    let issuers = service_harness::Issuers::new().await;
    let mut config = support::config(&url, &issuers);
    let db = &mut config.service.db;
    db.db_pool_mode = service_runtime::db::PoolMode::Transaction;
    db.database_direct_url = Some(db.database_url.clone());
    db.db_statement_timeout_ms = 4321;
    let app_url = db.database_url.expose().to_owned();
    let port = ephemeral_postgres::unused_local_port().unwrap();
    config.metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.pause().unwrap();
        cluster
    })
    .await
    .unwrap();

    let server = support::start_server(config).await;
    // Several tries fail meanwhile; the process serves on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status(server.addr).await, ServingStatus::NotServing as i32);
    let live = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(live.status(), 200, "liveness answers during the outage");

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.resume().unwrap();
        cluster
    })
    .await
    .unwrap();
    wait_for(server.addr, ServingStatus::Serving).await;
    // The settings were stored once the database answered: a new session of the role (what a
    // pooler's server connection is) starts with them.
    let (c, conn) = tokio_postgres::connect(&app_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let timeout: String = c
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "4321ms");
    server.stop().await.unwrap();
    drop(cluster);
}

#[test]
fn missing_configuration_is_one_line_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_identity-service"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CLERK_JWT_ISSUER_DOMAIN", "https://clerk.example.com")
        .env("SERVICE_JWKS_FILE", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}

#[test]
fn malformed_configuration_names_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_identity-service"))
        .env_clear()
        .env("DATABASE_URL", "postgres://x@127.0.0.1:1/x")
        .env("CLERK_JWT_ISSUER_DOMAIN", "https://clerk.example.com")
        .env("SERVICE_JWKS_FILE", "/nonexistent")
        .env("GRPC_ADDR", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("GRPC_ADDR"), "{stderr}");
}
