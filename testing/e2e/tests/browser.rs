//! The browser client in a real browser: the local stack (the three binaries) with CORS open to
//! the test page's origin, and `testing/e2e/browser/run.mjs` driving headless Chromium (Debian's
//! package, through playwright-core): two users' pages, StoreUser from the page, a message
//! shown live, a resume after a break with nothing missed, and a page of another origin
//! refused by CORS. Needs node and the npm packages of `testing/e2e/browser` (`npm ci` there; CI
//! installs them and Chromium).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use token_auth::signing::{ServiceTokenMinter, SigningKey};
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;
use vbase_stack::{Stack, StackConfig, dev_user_claims};

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf()
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Installs the npm packages when they are missing and builds the page.
fn build_page() {
    let dir = browser_dir();
    if !dir.join("node_modules").exists() {
        let ok = Command::new("npm").arg("ci").current_dir(&dir).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "npm ci in testing/e2e/browser failed: node and npm are needed for the browser tests"
        );
    }
    let ok = Command::new("npm")
        .args(["run", "build"])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(ok.success(), "building the test page failed");
}

fn port() -> u16 {
    ephemeral_postgres::unused_local_port().unwrap()
}

#[tokio::test]
async fn two_users_in_a_real_browser_see_each_other_live_and_resume() {
    tokio::task::spawn_blocking(build_page).await.unwrap();
    let (page_port, other_port) = (port(), port());
    let dir = std::env::temp_dir().join(format!("vbase-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = StackConfig::dev(bin_dir(), dir.clone());
    let cors = vec![(
        "CORS_ALLOWED_ORIGINS".to_owned(),
        format!("http://localhost:{page_port}"),
    )];
    cfg.extra_env.insert("identity-service", cors.clone());
    cfg.extra_env.insert("workspace-service", cors);
    let stack = Stack::start(cfg).await.expect("stack starts");

    // A workspace with a channel and two members.
    let service = ServiceTokenMinter::new(
        SigningKey::from_pem(&std::fs::read_to_string(&stack.service_key_file).unwrap()).unwrap(),
        "vbase-internal",
        vbase_stack::STACK_CALLER,
        Duration::from_secs(300),
    )
    .token_for("workspace-service")
    .unwrap();
    let mut ws = WorkspaceServiceClient::new(service_harness::connect(stack.workspace_addr).await);
    let now = token_auth::signing::now_secs();
    ws.upsert_workspace(service_harness::bearer(
        wsp::UpsertWorkspaceCommand {
            event_id: "browser-ws".into(),
            occurred_at: service_harness::ts(now - 60),
            clerk_org_id: "org_browser".into(),
            name: "Browser".into(),
            ..Default::default()
        },
        &service,
    ))
    .await
    .unwrap();
    let channel = ws
        .create_channel(service_harness::bearer(
            wsp::CreateChannelRequest {
                clerk_org_id: "org_browser".into(),
                name: "live".into(),
            },
            &service,
        ))
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap()
        .id;
    let key = SigningKey::from_pem(
        &std::fs::read_to_string(stack.state.clerk_signing_key_file.as_ref().unwrap()).unwrap(),
    )
    .unwrap();
    let token = |user: &str| {
        key.sign(&dev_user_claims(
            &stack.state,
            user,
            Some("org_browser"),
            "org:member",
            "Browser User",
            &format!("{user}@example.org"),
        ))
        .unwrap()
    };

    // Liveblocks rooms: a document of the members' workspace, a room of another workspace,
    // and a member removed after their token was issued.
    let doc_room = liveblocks_room(&mut ws, &service, "org_browser", true).await;
    ws.upsert_workspace(service_harness::bearer(
        wsp::UpsertWorkspaceCommand {
            event_id: "browser-ws-2".into(),
            occurred_at: service_harness::ts(now - 60),
            clerk_org_id: "org_elsewhere".into(),
            name: "Elsewhere".into(),
            ..Default::default()
        },
        &service,
    ))
    .await
    .unwrap();
    let foreign_room = liveblocks_room(&mut ws, &service, "org_elsewhere", false).await;
    // The removed member: Clerk's signed membership webhooks through the gateway, the removal
    // dated after their token was issued.
    let removed = "user_browser_removed";
    let now_ms = token_auth::signing::now_secs() * 1000;
    let created = membership_event("organizationMembership.created", removed, now_ms - 60_000);
    deliver_webhook(&stack.state, "msg_browser_member", &created).await;
    let removed_token = token(removed);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let deleted = membership_event("organizationMembership.deleted", removed, now_ms);
    deliver_webhook(&stack.state, "msg_browser_removal", &deleted).await;

    let mut run = Command::new("node");
    run.arg(browser_dir().join("run.mjs"))
        .env("IDENTITY_URL", format!("http://{}", stack.identity_addr))
        .env("WORKSPACE_URL", format!("http://{}", stack.workspace_addr))
        .env("TOKEN_A", token("user_browser_a"))
        .env("TOKEN_B", token("user_browser_b"))
        .env("CHANNEL_ID", &channel)
        .env("DOC_ROOM", &doc_room)
        .env("FOREIGN_ROOM", &foreign_room)
        .env("TOKEN_REMOVED", &removed_token)
        .env("PAGE_PORT", page_port.to_string())
        .env("OTHER_PORT", other_port.to_string());
    let out = tokio::task::spawn_blocking(move || run.output().expect("node runs"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("ok: ").count(), 8, "{stdout}");
    stack.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Clerk membership event of `user` in `org_browser`, shaped as Clerk's webhooks send it.
fn membership_event(kind: &str, user: &str, at_ms: i64) -> serde_json::Value {
    serde_json::json!({
        "data": {"id": format!("orgmem_browser_{user}"), "object": "organization_membership",
                 "role": "org:member", "permissions": [], "public_metadata": {},
                 "organization": {"id": "org_browser", "object": "organization", "name": "Browser"},
                 "public_user_data": {"user_id": user, "identifier": format!("{user}@example.org"),
                                      "first_name": "Removed", "last_name": null},
                 "created_at": at_ms - 60_000, "updated_at": at_ms},
        "object": "event", "type": kind, "timestamp": at_ms,
        "instance_id": vbase_stack::DEV_CLERK_INSTANCE,
    })
}

/// Posts `body` to the gateway's Clerk endpoint signed as Svix signs it; it must be applied.
async fn deliver_webhook(state: &vbase_stack::StackState, id: &str, body: &serde_json::Value) {
    let bytes = body.to_string().into_bytes();
    let mut req = reqwest::Client::new()
        .post(format!("{}/clerk", state.gateway_url))
        .body(bytes.clone());
    for (k, v) in vbase_stack::sign_webhook(&state.webhook_secret, id, &bytes).unwrap() {
        req = req.header(k, v);
    }
    let r = req.send().await.expect("the gateway answers");
    let (code, text) = (r.status().as_u16(), r.text().await.unwrap());
    assert_eq!(
        (code, text.as_str()),
        (200, r#"{"outcome":"applied"}"#),
        "webhook {id}"
    );
}

/// A document room in `org` (and, with `doc`, a document in it): its Liveblocks room id.
async fn liveblocks_room(
    ws: &mut WorkspaceServiceClient<tonic::transport::Channel>,
    service: &str,
    org: &str,
    doc: bool,
) -> String {
    let room = ws
        .create_room(service_harness::bearer(
            wsp::CreateRoomRequest {
                clerk_org_id: org.into(),
                kind: wsp::RoomKind::Document.into(),
                name: "Docs".into(),
                request_id: String::new(),
            },
            service,
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    if !doc {
        return room.liveblocks_room_id;
    }
    ws.create_room_item(service_harness::bearer(
        wsp::CreateRoomItemRequest {
            room_id: room.id,
            kind: wsp::ItemKind::Document.into(),
            name: "Plan".into(),
            language: String::new(),
            request_id: String::new(),
        },
        service,
    ))
    .await
    .unwrap()
    .into_inner()
    .item
    .unwrap()
    .liveblocks_room_id
}
