//! The database roles of production (deploy/README.md, "One database, two roles per service"):
//! each service in its own schema of one database, migrated by the schema's owner
//! (`DATABASE_MIGRATION_URL`, here through `serve --migrate`) and run as an app role granted with
//! `deploy/database-roles.sql`, which may read and write the tables and change no schema.

use service_harness::{Issuers, RunningServer};
use std::time::Duration;
use vbase_proto::identity::v1 as idp;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;
use vbase_proto::ops::v1 as ops;
use vbase_proto::ops::v1::delivery_intake_service_client::DeliveryIntakeServiceClient;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;

/// One service's roles: its owner's and its app role's URLs.
struct Roles {
    owner: String,
    app: String,
}

/// As the administrator of `db_url`: the service's schema, owned by a role of its own, and an
/// app role granted with the runbook's file.
async fn roles_for(db_url: &str, service: &str) -> Roles {
    let unique = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    let (owner, app) = (
        format!("{service}_owner_{unique}"),
        format!("{service}_app_{unique}"),
    );
    let password = "roles-test";
    service_harness::execute(
        db_url,
        &format!(
            "{}; {}; CREATE SCHEMA {service} AUTHORIZATION \"{owner}\"; {}",
            ephemeral_postgres::create_role_sql(&owner, password),
            ephemeral_postgres::create_role_sql(&app, password),
            ephemeral_postgres::role_grants(&owner, &app, service),
        ),
    )
    .await;
    Roles {
        owner: ephemeral_postgres::with_user(db_url, &owner, password),
        app: ephemeral_postgres::with_user(db_url, &app, password),
    }
}

use service_harness::{try_execute as try_sql, ts};

#[tokio::test]
async fn the_services_run_as_a_role_that_changes_no_schema_and_migrate_as_the_owner() {
    let db = service_harness::database("roles", "empty", |_| async { Ok(()) }).await;
    let identity_roles = roles_for(db.url(), "identity").await;
    let workspace_roles = roles_for(db.url(), "workspace").await;
    let issuers = Issuers::new().await;
    // Serving as the app role; `--migrate` with the owner's URL.
    let service_args = |roles: &Roles| {
        let mut args = issuers.service_args(db.url(), 4);
        args.db.database_url = roles.app.as_str().into();
        args.db.database_migration_url = Some(roles.owner.as_str().into());
        args.migrate_on_start = true;
        args
    };
    let identity_cfg = identity_service::Config {
        service: service_args(&identity_roles),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        group_commit_slots: 2,
        lookup_slots: 2,
        user_cache_bytes: 8 << 20,
        ledger: Default::default(),
        quotas: Default::default(),
    };
    let workspace_cfg = workspace_service::Config {
        service: service_args(&workspace_roles),
        liveblocks: workspace_service::LiveblocksArgs {
            liveblocks_api_url: "http://127.0.0.1:9".into(),
            liveblocks_secret_key: None,
            liveblocks_concurrency: 4,
            liveblocks_timeout_secs: 5,
            liveblocks_lease_secs: 30,
            liveblocks_backoff_base_ms: 100,
            liveblocks_backoff_max_secs: 5,
            liveblocks_poll_ms: 100,
            liveblocks_max_attempts: 5,
            liveblocks_key_check_secs: 10,
            // A second deletion an hour later: its own test turns it on.
            liveblocks_sweep_after_secs: 0,
        },
        purge: workspace_service::PurgeArgs {
            purge_chunk_rows: 1000,
            purge_concurrency: 1,
            purge_lanes: 2,
            purge_poll_ms: 50,
            purge_lease_secs: 10,
        },
        ledger: Default::default(),
        watch: Default::default(),
        roles: Default::default(),
        access_cache_bytes: 8 << 20,
        channel_cache_bytes: 4 << 20,
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
    };
    let identity = RunningServer::start(|l, s| identity_service::run(identity_cfg, l, s)).await;
    let workspace = RunningServer::start(|l, s| workspace_service::run(workspace_cfg, l, s)).await;
    let mut users = IdentityServiceClient::new(identity.channel().await);
    let mut ws = WorkspaceServiceClient::new(workspace.channel().await);

    // identity-service: a sync command, a user's own call, a read, the quarantine intake.
    let now = token_auth::signing::now_secs();
    users
        .upsert_user(issuers.service(
            "identity-service",
            idp::UpsertUserCommand {
                event_id: "msg_u1".into(),
                occurred_at: ts(now),
                clerk_id: "user_1".into(),
                name: "Ada".into(),
                email: "ada@example.org".into(),
                created_at: ts(now - 60),
                ..Default::default()
            },
        ))
        .await
        .expect("UpsertUser as the app role");
    users
        .store_user(issuers.user("user_2", idp::StoreUserRequest {}))
        .await
        .expect("StoreUser as the app role");
    let got = users
        .get_user(issuers.service(
            "identity-service",
            idp::GetUserRequest {
                clerk_id: "user_1".into(),
            },
        ))
        .await
        .expect("GetUser as the app role");
    assert_eq!(got.into_inner().user.unwrap().name, "Ada");
    DeliveryIntakeServiceClient::new(identity.channel().await)
        .quarantine_delivery(issuers.gateway(
            "identity-service",
            ops::QuarantineDeliveryRequest {
                svix_id: "msg_bad".into(),
                event_type: "user.created".into(),
                reason: "test".into(),
                body: b"{}".to_vec(),
            },
        ))
        .await
        .expect("QuarantineDelivery as the app role");

    // workspace-service: a workspace, a member, a channel and a message, a room; then the
    // two-step delete, whose purge runs as the app role in the background.
    ws.upsert_workspace(issuers.service(
        "workspace-service",
        wsp::UpsertWorkspaceCommand {
            event_id: "msg_w1".into(),
            occurred_at: ts(now),
            clerk_org_id: "org_1".into(),
            name: "Acme".into(),
            slug: "acme".into(),
            owner_clerk_id: "user_1".into(),
            event_time: None,
            created_at: ts(now),
            instance_id: "ins_roles".into(),
        },
    ))
    .await
    .expect("UpsertWorkspace as the app role");
    ws.upsert_membership(issuers.service(
        "workspace-service",
        wsp::UpsertMembershipCommand {
            event_id: "msg_m1".into(),
            occurred_at: ts(now),
            clerk_org_id: "org_1".into(),
            clerk_user_id: "user_1".into(),
            role: "org:admin".into(),
            ..Default::default()
        },
    ))
    .await
    .expect("UpsertMembership as the app role");
    let member = |msg| issuers.member("user_1", "org_1", "org:admin", msg);
    let channel = ws
        .create_channel(member(wsp::CreateChannelRequest {
            clerk_org_id: "org_1".into(),
            name: "ops".into(),
        }))
        .await
        .expect("CreateChannel as the app role")
        .into_inner()
        .channel
        .unwrap();
    ws.post_message(issuers.member(
        "user_1",
        "org_1",
        "org:admin",
        wsp::PostMessageRequest {
            channel_id: channel.id.clone(),
            body: "hello".into(),
            author_clerk_id: String::new(),
            request_id: String::new(),
        },
    ))
    .await
    .expect("PostMessage as the app role");
    ws.create_room(issuers.member(
        "user_1",
        "org_1",
        "org:admin",
        wsp::CreateRoomRequest {
            clerk_org_id: "org_1".into(),
            kind: wsp::RoomKind::Document as i32,
            name: "spec".into(),
            request_id: String::new(),
        },
    ))
    .await
    .expect("CreateRoom as the app role");
    ws.delete_workspace(issuers.service(
        "workspace-service",
        wsp::DeleteWorkspaceCommand {
            event_id: "msg_w2".into(),
            occurred_at: ts(now + 1),
            clerk_org_id: "org_1".into(),
            instance_id: "ins_roles".into(),
        },
    ))
    .await
    .expect("DeleteWorkspace as the app role");
    service_harness::eventually(
        "the purge finished as the app role",
        Duration::from_secs(20),
        || async {
            service_harness::scalar(
                &workspace_roles.owner,
                "SELECT (SELECT count(*) FROM purge_jobs) + (SELECT count(*) FROM messages)",
            )
            .await
                == 0
        },
    )
    .await;
    assert_eq!(
        service_harness::scalar(
            &workspace_roles.owner,
            "SELECT count(*) FROM liveblocks_cleanup_jobs"
        )
        .await,
        1,
        "the room's clean-up was queued"
    );

    // The app role changes no schema: not its own tables', not in any schema.
    for (roles, table) in [(&identity_roles, "users"), (&workspace_roles, "messages")] {
        for ddl in [
            "CREATE TABLE intruder (id int)".to_owned(),
            "CREATE TABLE public.intruder (id int)".to_owned(),
            format!("ALTER TABLE {table} ADD COLUMN intruder int"),
            format!("CREATE INDEX intruder ON {table} (created_at)"),
            format!("TRUNCATE {table}"),
            format!("DROP TABLE {table}"),
            "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'".to_owned(),
        ] {
            let refused = try_sql(&roles.app, &ddl).await.expect_err(&ddl);
            assert!(
                refused.contains("permission denied") || refused.contains("must be owner"),
                "{ddl}: {refused}"
            );
        }
        // ...while its owner may (what a migration does).
        try_sql(
            &roles.owner,
            &format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS added_by_owner int"),
        )
        .await
        .expect("the owner migrates");
    }
    identity.stop().await.unwrap();
    workspace.stop().await.unwrap();
}

/// A service in a database of its own (`schema=public`), migrated by an owner role that is not
/// a superuser: after `deploy/database-roles.sql` the owner creates every table in `public`
/// and the app role reads and writes them, creating nothing.
#[tokio::test]
async fn in_a_database_of_its_own_a_non_superuser_owner_migrates_into_public() {
    let db = service_harness::database("roles_public", "empty", |_| async { Ok(()) }).await;
    let unique = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    let (owner, app) = (
        format!("public_owner_{unique}"),
        format!("public_app_{unique}"),
    );
    let password = "roles-test";
    service_harness::execute(
        db.url(),
        &format!(
            "{}; {}; {}",
            ephemeral_postgres::create_role_sql(&owner, password),
            ephemeral_postgres::create_role_sql(&app, password),
            ephemeral_postgres::role_grants(&owner, &app, "public"),
        ),
    )
    .await;
    let owner_url = ephemeral_postgres::with_user(db.url(), &owner, password);
    let app_url = ephemeral_postgres::with_user(db.url(), &app, password);
    assert_eq!(
        service_harness::scalar(
            &owner_url,
            "SELECT count(*) FROM pg_roles WHERE rolname = current_user AND (rolsuper OR rolcreatedb)"
        )
        .await,
        0,
        "the owner is an ordinary role"
    );
    let issuers = Issuers::new().await;
    let mut args = issuers.service_args(db.url(), 4);
    args.db.database_url = app_url.as_str().into();
    args.db.database_migration_url = Some(owner_url.as_str().into());
    args.migrate_on_start = true;
    let cfg = identity_service::Config {
        service: args,
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        group_commit_slots: 2,
        lookup_slots: 2,
        user_cache_bytes: 8 << 20,
        ledger: Default::default(),
        quotas: Default::default(),
    };
    let identity = RunningServer::start(|l, s| identity_service::run(cfg, l, s)).await;
    let mut users = IdentityServiceClient::new(identity.channel().await);
    users
        .store_user(issuers.user("user_p", idp::StoreUserRequest {}))
        .await
        .expect("StoreUser as the app role");
    assert_eq!(
        service_harness::scalar(
            &owner_url,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> current_user"
        )
        .await,
        0,
        "every table is the owner's"
    );
    let refused = try_sql(&app_url, "CREATE TABLE public.intruder (id int)")
        .await
        .expect_err("the app role creates nothing");
    assert!(refused.contains("permission denied"), "{refused}");
    identity.stop().await.unwrap();
}
