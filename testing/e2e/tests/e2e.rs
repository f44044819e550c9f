//! End to end across the three real binaries (separate processes) on a real PostgreSQL, with
//! in-process stand-ins for Clerk's JWKS and the Liveblocks API. Driven only through public
//! interfaces: signed HTTP webhooks and gRPC with tokens. Waits poll with deadlines.

use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use token_auth::signing::{ServiceTokenMinter, SigningKey};
use tonic::transport::Channel;
use vbase_proto::identity::v1 as idp;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;
use vbase_stack::{Stack, StackConfig, Which, dev_user_claims, sign_webhook};

fn bin_dir() -> PathBuf {
    // target/debug/deps/e2e-xxxx -> target/debug
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf()
}

async fn stack() -> (Stack, tempfile_dir::Dir) {
    let dir = tempfile_dir::Dir::new();
    let mut cfg = StackConfig::dev(bin_dir(), dir.path());
    cfg.extra_env.insert(
        "workspace-service",
        vec![
            ("LIVEBLOCKS_BACKOFF_BASE_MS".into(), "50".into()),
            ("LIVEBLOCKS_POLL_MS".into(), "50".into()),
            ("LIVEBLOCKS_SWEEP_AFTER_SECS".into(), "0".into()),
        ],
    );
    (Stack::start(cfg).await.expect("stack starts"), dir)
}

/// A temp dir without another dependency.
mod tempfile_dir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "vbase-e2e-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub fn path(&self) -> std::path::PathBuf {
            self.0.clone()
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

struct Client {
    state: vbase_stack::StackState,
    identity_addr: std::net::SocketAddr,
    workspace_addr: std::net::SocketAddr,
    http: reqwest::Client,
    service: ServiceTokenMinter,
    clerk_key: SigningKey,
}

impl Client {
    fn new(stack: &Stack) -> Self {
        let key = SigningKey::from_pem(&std::fs::read_to_string(&stack.service_key_file).unwrap())
            .unwrap();
        let clerk_key = SigningKey::from_pem(
            &std::fs::read_to_string(stack.state.clerk_signing_key_file.as_ref().unwrap()).unwrap(),
        )
        .unwrap();
        Self {
            state: stack.state.clone(),
            identity_addr: stack.identity_addr,
            workspace_addr: stack.workspace_addr,
            http: reqwest::Client::new(),
            service: ServiceTokenMinter::new(
                key,
                "vbase-internal",
                vbase_stack::STACK_CALLER,
                Duration::from_secs(300),
            ),
            clerk_key,
        }
    }

    async fn post(&self, id: &str, body: &Value) -> u16 {
        let bytes = body.to_string().into_bytes();
        let headers = sign_webhook(&self.state.webhook_secret, id, &bytes).unwrap();
        let mut req = self
            .http
            .post(format!("{}/clerk", self.state.gateway_url))
            .body(bytes);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Like Svix: retries every non-2xx after a short delay, until accepted.
    async fn deliver(&self, id: &str, body: &Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let code = self.post(id, body).await;
            if (200..300).contains(&code) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never accepted (last {code})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn user_token(&self, user: &str, org: Option<&str>, role: &str) -> String {
        self.clerk_key
            .sign(&dev_user_claims(
                &self.state,
                user,
                org,
                role,
                "Token Name",
                &format!("{user}@token.example"),
            ))
            .unwrap()
    }

    fn as_user<T>(&self, user: &str, org: Option<&str>, role: &str, msg: T) -> tonic::Request<T> {
        service_harness::bearer(msg, &self.user_token(user, org, role))
    }

    fn as_service<T>(&self, aud: &str, msg: T) -> tonic::Request<T> {
        service_harness::bearer(msg, &self.service.token_for(aud).unwrap())
    }

    async fn identity(&self) -> IdentityServiceClient<Channel> {
        IdentityServiceClient::new(service_harness::connect(self.identity_addr).await)
    }

    async fn workspace(&self) -> WorkspaceServiceClient<Channel> {
        WorkspaceServiceClient::new(service_harness::connect(self.workspace_addr).await)
    }

    async fn user(&self, id: &str) -> Option<idp::User> {
        let mut c = self.identity().await;
        match c
            .get_user(self.as_service(
                "identity-service",
                idp::GetUserRequest {
                    clerk_id: id.into(),
                },
            ))
            .await
        {
            Ok(r) => r.into_inner().user,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => panic!("{s:?}"),
        }
    }

    async fn members(&self, org: &str) -> Option<BTreeMap<String, String>> {
        let mut c = self.workspace().await;
        let r = c
            .list_members(self.as_service(
                "workspace-service",
                wsp::ListMembersRequest {
                    clerk_org_id: org.into(),
                    page_size: 500,
                    page_token: String::new(),
                },
            ))
            .await;
        match r {
            Ok(r) => Some(
                r.into_inner()
                    .members
                    .into_iter()
                    .map(|m| (m.clerk_user_id, m.role))
                    .collect(),
            ),
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => panic!("{s:?}"),
        }
    }

    async fn workspace_name(&self, org: &str) -> Option<String> {
        let mut c = self.workspace().await;
        match c
            .get_workspace(self.as_service(
                "workspace-service",
                wsp::GetWorkspaceRequest {
                    clerk_org_id: org.into(),
                },
            ))
            .await
        {
            Ok(r) => r.into_inner().workspace.map(|w| w.name),
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => panic!("{s:?}"),
        }
    }
}

async fn count(db_url: &str, sql: &str) -> i64 {
    let (c, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
}

fn user_event(kind: &str, id: &str, first: &str, updated_ms: i64) -> Value {
    json!({"data": {"id": id, "object": "user", "first_name": first, "last_name": null, "username": null,
                    "primary_email_address_id": "idn_p", "image_url": format!("https://img.clerk.com/{first}"),
                    "email_addresses": [{"id": "idn_x", "email_address": "secondary@example.org"},
                                        {"id": "idn_p", "email_address": format!("{id}@example.org")}],
                    "created_at": 1_700_000_000_000_i64, "updated_at": updated_ms},
           "object": "event", "type": kind, "timestamp": updated_ms})
}

fn org_event(kind: &str, id: &str, name: &str, updated_ms: i64) -> Value {
    json!({"data": {"id": id, "object": "organization", "name": name, "slug": null, "created_by": "user_owner",
                    "created_at": 1_700_000_000_000_i64, "updated_at": updated_ms},
           "object": "event", "type": kind, "timestamp": updated_ms})
}

fn membership_event(kind: &str, org: &str, user: &str, role: &str, updated_ms: i64) -> Value {
    json!({"data": {"id": format!("orgmem_{org}_{user}"), "object": "organization_membership", "role": role,
                    "organization": {"id": org, "name": "x", "created_at": 1, "updated_at": 1},
                    "public_user_data": {"user_id": user, "identifier": "x@example.org"},
                    "created_at": 1_700_000_000_000_i64, "updated_at": updated_ms},
           "object": "event", "type": kind, "timestamp": updated_ms})
}

fn deleted_event(kind: &str, object: &str, id: &str, at_ms: i64) -> Value {
    json!({"data": {"deleted": true, "id": id, "object": object}, "object": "event", "type": kind, "timestamp": at_ms})
}

#[tokio::test]
async fn the_seed_lifecycle_end_to_end() {
    let (stack, _dir) = stack().await;
    let c = Client::new(&stack);
    let now_ms = token_auth::signing::now_secs() * 1000;

    // Sign-up: the webhook, then GetCurrentUser with the user's own token.
    c.deliver(
        "msg_signup",
        &user_event("user.created", "user_ada", "Ada", now_ms - 60_000),
    )
    .await;
    let mut ident = c.identity().await;
    let me = ident
        .get_current_user(c.as_user("user_ada", None, "", idp::GetCurrentUserRequest {}))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(
        (me.name.as_str(), me.email.as_str()),
        ("Ada", "user_ada@example.org")
    );

    // StoreUser before the webhook arrives, then the webhook: one user, newest (webhook) data.
    let stored = ident
        .store_user(c.as_user("user_bob", None, "", idp::StoreUserRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(stored.created);
    c.deliver(
        "msg_bob",
        &user_event("user.created", "user_bob", "Bob", now_ms - 10_000),
    )
    .await;
    let bob = c.user("user_bob").await.unwrap();
    assert_eq!(
        (
            bob.name.as_str(),
            bob.email.as_str(),
            bob.image_url.as_str()
        ),
        ("Bob", "user_bob@example.org", "https://img.clerk.com/Bob")
    );
    let n = count(
        &stack.identity_db,
        "SELECT count(*) FROM users WHERE clerk_id = 'user_bob'",
    )
    .await;
    assert_eq!(n, 1);

    // Organization -> workspace with `general`; memberships; content.
    c.deliver(
        "msg_org",
        &org_event("organization.created", "org_acme", "Acme", now_ms),
    )
    .await;
    c.deliver(
        "msg_m1",
        &membership_event(
            "organizationMembership.created",
            "org_acme",
            "user_ada",
            "admin",
            now_ms,
        ),
    )
    .await;
    c.deliver(
        "msg_m2",
        &membership_event(
            "organizationMembership.created",
            "org_acme",
            "user_bob",
            "basic_member",
            now_ms,
        ),
    )
    .await;
    assert_eq!(
        c.members("org_acme").await.unwrap(),
        BTreeMap::from([
            ("user_ada".to_string(), "org:admin".to_string()),
            ("user_bob".to_string(), "org:member".to_string())
        ])
    );
    let mut ws = c.workspace().await;
    let org = Some("org_acme");
    let channels = ws
        .list_channels(c.as_user(
            "user_bob",
            org,
            "org:member",
            wsp::ListChannelsRequest {
                clerk_org_id: "org_acme".into(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .channels;
    assert_eq!(
        channels.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        vec!["general"]
    );
    let general = channels[0].id.clone();
    // Each token states its user's role, as Clerk's would.
    for (who, role, text) in [
        ("user_bob", "org:member", "hello"),
        ("user_ada", "org:admin", "welcome"),
    ] {
        ws.post_message(c.as_user(
            who,
            org,
            role,
            wsp::PostMessageRequest {
                channel_id: general.clone(),
                body: text.into(),
                author_clerk_id: String::new(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    }
    ws.mark_channel_read(c.as_user(
        "user_bob",
        org,
        "org:member",
        wsp::MarkChannelReadRequest {
            channel_id: general.clone(),
            message_id: String::new(),
        },
    ))
    .await
    .unwrap();
    let mut expected_rooms = BTreeSet::new();
    for (kind, item) in [
        (wsp::RoomKind::Document, Some(wsp::ItemKind::Document)),
        (wsp::RoomKind::Code, Some(wsp::ItemKind::CodeFile)),
        (wsp::RoomKind::Whiteboard, Some(wsp::ItemKind::Whiteboard)),
        (wsp::RoomKind::Conference, None),
    ] {
        let room = ws
            .create_room(c.as_user(
                "user_ada",
                org,
                "org:admin",
                wsp::CreateRoomRequest {
                    clerk_org_id: "org_acme".into(),
                    kind: kind.into(),
                    name: "room".into(),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .room
            .unwrap();
        expected_rooms.insert(room.liveblocks_room_id.clone());
        match item {
            Some(k) => {
                let it = ws
                    .create_room_item(c.as_user(
                        "user_bob",
                        org,
                        "org:member",
                        wsp::CreateRoomItemRequest {
                            room_id: room.id.clone(),
                            kind: k.into(),
                            name: "item".into(),
                            language: String::new(),
                            request_id: String::new(),
                        },
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .item
                    .unwrap();
                expected_rooms.insert(it.liveblocks_room_id);
            }
            None => {
                ws.schedule_meeting(c.as_user(
                    "user_bob",
                    org,
                    "org:member",
                    wsp::ScheduleMeetingRequest {
                        room_id: room.id.clone(),
                        title: "standup".into(),
                        starts_at: service_harness::ts(2_000_000_000),
                        ends_at: service_harness::ts(2_000_000_900),
                        request_id: String::new(),
                    },
                ))
                .await
                .unwrap();
            }
        }
    }

    // User deleted: gone from identity, memberships gone, their messages kept.
    c.deliver(
        "msg_bob_del",
        &deleted_event("user.deleted", "user", "user_bob", now_ms + 1000),
    )
    .await;
    assert!(c.user("user_bob").await.is_none());
    assert_eq!(
        c.members("org_acme")
            .await
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        vec!["user_ada".to_string()]
    );
    let msgs = ws
        .list_messages(c.as_user(
            "user_ada",
            org,
            "org:admin",
            wsp::ListMessagesRequest {
                channel_id: general.clone(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .messages;
    let bob_msg = msgs
        .iter()
        .find(|m| m.author_clerk_id == "user_bob")
        .expect("bob's message kept");
    assert!(bob_msg.author_deleted);
    assert_eq!(
        count(&stack.workspace_db, "SELECT count(*) FROM read_receipts").await,
        0
    );

    // Organization deleted: gone at once, every row purged in the background, and exactly the
    // expected Liveblocks rooms deleted.
    c.deliver(
        "msg_org_del",
        &deleted_event(
            "organization.deleted",
            "organization",
            "org_acme",
            now_ms + 2000,
        ),
    )
    .await;
    assert_eq!(c.workspace_name("org_acme").await, None);
    service_harness::eventually("purge finished", Duration::from_secs(20), || async {
        count(&stack.workspace_db, "SELECT count(*) FROM purge_jobs").await == 0
    })
    .await;
    for t in [
        "workspaces",
        "channels",
        "messages",
        "read_receipts",
        "rooms",
        "documents",
        "code_files",
        "whiteboards",
        "meetings",
        "memberships",
    ] {
        assert_eq!(
            count(&stack.workspace_db, &format!("SELECT count(*) FROM {t}")).await,
            0,
            "{t}"
        );
    }
    let live = stack.liveblocks.as_ref().unwrap();
    service_harness::eventually(
        "Liveblocks rooms deleted",
        Duration::from_secs(20),
        || async { live.deleted().into_iter().collect::<BTreeSet<_>>() == expected_rooms },
    )
    .await;
    assert_eq!(
        live.deleted().len(),
        expected_rooms.len(),
        "each room exactly once"
    );
    // A late organization.updated does not bring it back.
    c.deliver(
        "msg_org_late",
        &org_event("organization.updated", "org_acme", "Zombie", now_ms + 5000),
    )
    .await;
    assert!(c.workspace_name("org_acme").await.is_none());
    stack.stop().await.unwrap();
}

/// The state the stream should end in, computed by applying it in order.
#[derive(Debug, Default, PartialEq)]
struct World {
    users: BTreeMap<String, String>,
    orgs: BTreeMap<String, String>,
    members: BTreeMap<String, BTreeMap<String, String>>,
}

#[tokio::test]
async fn a_shuffled_duplicated_stream_with_a_crash_ends_in_the_in_order_state() {
    let (mut stack, _dir) = stack().await;
    let base = token_auth::signing::now_secs() * 1000 - 3_600_000;
    // A realistic stream, in order: users sign up and update their profile, organizations are
    // created and renamed, members join and change roles; some users and organizations go.
    let mut events: Vec<(String, Value)> = Vec::new();
    let mut t = base;
    let mut tick = || {
        t += 1000;
        t
    };
    let users: Vec<String> = (0..80).map(|i| format!("user_s{i}")).collect();
    let orgs: Vec<String> = (0..10).map(|i| format!("org_s{i}")).collect();
    for u in &users {
        events.push((
            format!("{u}_c"),
            user_event("user.created", u, &format!("{u}v0"), tick()),
        ));
    }
    for o in &orgs {
        events.push((
            format!("{o}_c"),
            org_event("organization.created", o, &format!("{o}v0"), tick()),
        ));
    }
    for round in 1..=3 {
        for u in &users {
            events.push((
                format!("{u}_u{round}"),
                user_event("user.updated", u, &format!("{u}v{round}"), tick()),
            ));
        }
    }
    for (i, o) in orgs.iter().enumerate() {
        events.push((
            format!("{o}_u"),
            org_event("organization.updated", o, &format!("{o}v1"), tick()),
        ));
        for j in 0..8 {
            let u = &users[(i * 8 + j) % users.len()];
            events.push((
                format!("{o}_{u}_mc"),
                membership_event(
                    "organizationMembership.created",
                    o,
                    u,
                    "basic_member",
                    tick(),
                ),
            ));
            let role = if j % 2 == 0 { "admin" } else { "org:member" };
            events.push((
                format!("{o}_{u}_mu"),
                membership_event("organizationMembership.updated", o, u, role, tick()),
            ));
        }
    }
    for u in users.iter().step_by(4) {
        events.push((
            format!("{u}_d"),
            deleted_event("user.deleted", "user", u, tick()),
        ));
    }
    for o in orgs.iter().take(2) {
        events.push((
            format!("{o}_d"),
            deleted_event("organization.deleted", "organization", o, tick()),
        ));
    }
    assert!(events.len() >= 500, "stream of {} events", events.len());

    // In-order result.
    let mut world = World::default();
    for (_, e) in &events {
        let d = &e["data"];
        let id = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
        match e["type"].as_str().unwrap() {
            "user.created" | "user.updated" => {
                world.users.insert(id("id"), id("first_name"));
            }
            "user.deleted" => {
                world.users.remove(&id("id"));
                for m in world.members.values_mut() {
                    m.remove(&id("id"));
                }
            }
            "organization.created" | "organization.updated" => {
                world.orgs.insert(id("id"), id("name"));
                world.members.entry(id("id")).or_default();
            }
            "organization.deleted" => {
                world.orgs.remove(&id("id"));
                world.members.remove(&id("id"));
            }
            "organizationMembership.created" | "organizationMembership.updated" => {
                let org = d["organization"]["id"].as_str().unwrap().to_owned();
                let user = d["public_user_data"]["user_id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let role = token_auth::normalize_role(d["role"].as_str().unwrap());
                world.members.entry(org).or_default().insert(user, role);
            }
            other => panic!("{other}"),
        }
    }

    // Deliveries: shuffled, 15% duplicated, 8 in flight, each retried until accepted (as Svix
    // does). identity-service is killed while deliveries are in flight, halfway through, and
    // restarted a moment later. The seed is printed; `E2E_SEED=<n>` replays a run.
    let seed: u64 = std::env::var("E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("shuffled-stream seed: {seed} (E2E_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut deliveries: Vec<usize> = (0..events.len()).collect();
    let dups: Vec<usize> = deliveries
        .choose_multiple(&mut rng, events.len() * 15 / 100)
        .cloned()
        .collect();
    deliveries.extend(dups);
    deliveries.shuffle(&mut rng);
    let total = deliveries.len();
    let c = std::sync::Arc::new(Client::new(&stack));
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let events = std::sync::Arc::new(events);
    let sender = {
        let (c, accepted, events) = (c.clone(), accepted.clone(), events.clone());
        tokio::spawn(async move {
            use futures::StreamExt;
            futures::stream::iter(deliveries)
                .for_each_concurrent(8, |i| {
                    let (c, accepted, events) = (c.clone(), accepted.clone(), events.clone());
                    async move {
                        c.deliver(&events[i].0, &events[i].1).await;
                        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
                .await;
        })
    };
    service_harness::eventually(
        "half the stream accepted",
        Duration::from_secs(60),
        || async { accepted.load(std::sync::atomic::Ordering::SeqCst) >= total / 2 },
    )
    .await;
    stack.kill(Which::Identity);
    let at_kill = accepted.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.spawn(Which::Identity).unwrap();
    sender.await.unwrap();
    assert!(at_kill < total, "the crash came after the last delivery");

    // Final state equals the in-order result.
    let mut got = World::default();
    for u in &users {
        if let Some(user) = c.user(u).await {
            got.users.insert(u.clone(), user.name);
        }
    }
    for o in &orgs {
        if let Some(name) = c.workspace_name(o).await {
            got.orgs.insert(o.clone(), name);
            got.members.insert(o.clone(), c.members(o).await.unwrap());
        }
    }
    assert_eq!(got, world);
    // Every delivery id recorded exactly once by the service it concerns.
    let identity_ids = events
        .iter()
        .filter(|(_, e)| e["type"].as_str().unwrap().starts_with("user."))
        .count() as i64;
    let workspace_ids = events
        .iter()
        .filter(|(_, e)| {
            let t = e["type"].as_str().unwrap();
            !t.starts_with("user.") || t == "user.deleted"
        })
        .count() as i64;
    assert_eq!(
        count(&stack.identity_db, "SELECT count(*) FROM processed_events").await,
        identity_ids
    );
    assert_eq!(
        count(&stack.workspace_db, "SELECT count(*) FROM processed_events").await,
        workspace_ids
    );
    stack.stop().await.unwrap();
}

/// workspace-service is killed (SIGKILL) in the middle of a purge and started again: the purge
/// resumes where the rows stop and completes, each Liveblocks room is deleted once, and a
/// duplicate or late delete of the organization changes nothing.
#[tokio::test]
async fn a_purge_survives_a_crash_of_the_service() {
    let dir = tempfile_dir::Dir::new();
    let mut cfg = StackConfig::dev(bin_dir(), dir.path());
    cfg.extra_env.insert(
        "workspace-service",
        vec![
            ("PURGE_CHUNK_ROWS".into(), "100".into()),
            ("PURGE_LEASE_SECS".into(), "5".into()),
            ("PURGE_POLL_MS".into(), "100".into()),
            ("LIVEBLOCKS_POLL_MS".into(), "50".into()),
            ("LIVEBLOCKS_SWEEP_AFTER_SECS".into(), "0".into()),
        ],
    );
    let mut stack = Stack::start(cfg).await.expect("stack starts");
    let c = Client::new(&stack);
    let now_ms = token_auth::signing::now_secs() * 1000;
    c.deliver(
        "crash_org",
        &org_event("organization.created", "org_crash", "Crash", now_ms - 5000),
    )
    .await;
    let db = stack.workspace_db.clone();
    service_harness::execute(
        &db,
        "INSERT INTO channels (id, workspace_id, name) SELECT gen_random_uuid(), id, 'big' FROM workspaces;
         INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), c.workspace_id, c.id, 'user_1', 'm', now() - g * interval '1 ms'
             FROM channels c, generate_series(1, 200000) g WHERE c.name = 'big';
         INSERT INTO rooms (id, workspace_id, kind, name) SELECT gen_random_uuid(), id, 'document', 'docs' FROM workspaces;
         INSERT INTO documents (id, workspace_id, room_id, name) SELECT gen_random_uuid(), r.workspace_id, r.id, 'd' || g FROM rooms r, generate_series(1, 300) g;
         ANALYZE;",
    )
    .await;
    assert_eq!(
        service_harness::scalar(&db, "SELECT count(*) FROM documents").await,
        300
    );
    c.deliver(
        "crash_del",
        &deleted_event("organization.deleted", "organization", "org_crash", now_ms),
    )
    .await;
    service_harness::eventually("the purge under way", Duration::from_secs(30), || async {
        service_harness::scalar(&db, "SELECT count(*) FROM messages").await < 190_000
    })
    .await;
    stack.kill(Which::Workspace);
    let left = service_harness::scalar(&db, "SELECT count(*) FROM messages").await;
    assert!(left > 0, "the purge finished before the crash");
    assert_eq!(
        service_harness::scalar(&db, "SELECT count(*) FROM purge_jobs").await,
        1
    );
    stack.spawn(Which::Workspace).unwrap();
    stack.wait_ready(Duration::from_secs(30)).await.unwrap();
    // Svix's retry of the delete and a later delete event change nothing.
    assert_eq!(
        c.post(
            "crash_del",
            &deleted_event("organization.deleted", "organization", "org_crash", now_ms)
        )
        .await,
        200
    );
    assert_eq!(
        c.post(
            "crash_del_late",
            &deleted_event(
                "organization.deleted",
                "organization",
                "org_crash",
                now_ms + 1000
            )
        )
        .await,
        200
    );
    service_harness::eventually("the purge finished", Duration::from_secs(120), || async {
        service_harness::scalar(&db, "SELECT count(*) FROM purge_jobs").await == 0
    })
    .await;
    let left = service_harness::tables_with_rows(&db, service_harness::WORKSPACE_BOOKKEEPING).await;
    assert!(left.is_empty(), "rows left: {left:?}");
    // The room and its 300 documents, each deleted at Liveblocks exactly once.
    let live = stack.liveblocks.as_ref().unwrap();
    service_harness::eventually(
        "Liveblocks rooms deleted",
        Duration::from_secs(30),
        || async { live.deleted().len() >= 301 },
    )
    .await;
    let deleted = live.deleted();
    let distinct: BTreeSet<&String> = deleted.iter().collect();
    assert_eq!(
        (deleted.len(), distinct.len()),
        (301, 301),
        "each room once"
    );
    assert_eq!(
        distinct.iter().filter(|r| r.starts_with("doc:")).count(),
        300
    );
    stack.stop().await.unwrap();
}

/// `webhook-gateway reconcile`, the binary, against the development stack's stand-in of Clerk's
/// Backend API: a run exits 0 with its summary; a refused key exits 1 with one line that says
/// what to fix; a bad option exits 2.
#[tokio::test]
async fn the_reconcile_command_backfills_the_local_stack_and_says_why_it_stops() {
    let (s, _dir) = stack().await;
    // The stand-ins run on this test's runtime: wait for the process off it.
    let output = |mut c: std::process::Command| async move {
        tokio::task::spawn_blocking(move || c.output().expect("reconcile runs"))
            .await
            .unwrap()
    };
    // No webhook has been applied yet: the first run names the instance it expects.
    let mut c = s.reconcile_command();
    c.args(["--json", "--instance", vbase_stack::DEV_CLERK_INSTANCE]);
    let out = output(c).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(summary["completed"], json!(true));
    let created = |kind: &str| {
        summary["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == kind)
            .map(|k| k["created"].as_u64().unwrap())
    };
    assert_eq!(
        (
            created("users"),
            created("organizations"),
            created("memberships")
        ),
        (Some(3), Some(1), Some(2))
    );
    assert_eq!(
        count(
            &s.identity_db,
            "SELECT count(*) FROM users WHERE clerk_id IN ('user_local', 'user_alice', 'user_bob')"
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &s.workspace_db,
            "SELECT count(*) FROM memberships WHERE clerk_org_id = 'org_local' AND NOT deleted"
        )
        .await,
        2
    );

    // Confirmed: later runs need no flag.
    assert_eq!(
        count(
            &s.workspace_db,
            "SELECT count(*) FROM clerk_instances WHERE instance_id = 'ins_local' AND confirmed_at IS NOT NULL"
        )
        .await,
        1
    );
    let again = output(s.reconcile_command()).await;
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let mut c = s.reconcile_command();
    c.env_remove("CLERK_SECRET_KEY_FILE");
    c.env("CLERK_SECRET_KEY", "sk_test_not_this_one");
    let refused = output(c).await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("webhook-gateway reconcile: stopped:")
            && last.contains("CLERK_SECRET_KEY"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("sk_test_not_this_one"),
        "the key is never logged"
    );

    let mut c = s.reconcile_command();
    c.args(["--user", "org_not_a_user"]);
    let bad = output(c).await;
    assert_eq!(bad.status.code(), Some(2));
}

/// Shapes Clerk's specification allows, through the real gateway: an email address entry
/// without an id is skipped; a membership without `public_user_data` is kept in quarantine
/// (2xx, replayable), never refused with a 4xx Svix would give up on; an envelope `timestamp`
/// in seconds (as in every example of Clerk's webhook specification) dates a removal right.
#[tokio::test]
async fn shapes_clerk_documents_are_applied_or_kept() {
    let (s, _dir) = stack().await;
    let c = Client::new(&s);
    let post = |id: &'static str, body: Value| {
        let c = &c;
        async move {
            let bytes = body.to_string().into_bytes();
            let mut req = c
                .http
                .post(format!("{}/clerk", c.state.gateway_url))
                .body(bytes.clone());
            for (k, v) in sign_webhook(&c.state.webhook_secret, id, &bytes).unwrap() {
                req = req.header(k, v);
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let now_ms = token_auth::signing::now_secs() * 1000;

    // An email address entry without an id: skipped, the primary one kept.
    let mut user = user_event("user.created", "user_shape", "Shape", now_ms);
    user["data"]["email_addresses"]
        .as_array_mut()
        .unwrap()
        .insert(
            0,
            json!({"object": "email_address", "email_address": "noid@example.org"}),
        );
    user["instance_id"] = json!(vbase_stack::DEV_CLERK_INSTANCE);
    let (code, body) = post("msg_shape_user", user).await;
    assert_eq!((code, body.as_str()), (200, r#"{"outcome":"applied"}"#));
    assert_eq!(
        count(
            &s.identity_db,
            "SELECT count(*) FROM users WHERE clerk_id = 'user_shape' AND email = 'user_shape@example.org'"
        )
        .await,
        1
    );

    // A membership without public_user_data: its user is unknown. Kept, answered 2xx.
    let membership = |kind: &str, org: &str, user: Option<&str>, timestamp: i64| {
        let mut m = json!({"data": {"id": format!("orgmem_{org}"), "object": "organization_membership",
                              "role": "org:member", "permissions": [], "public_metadata": {},
                              "organization": {"id": org, "object": "organization", "name": org},
                              "created_at": now_ms - 60_000, "updated_at": now_ms - 60_000},
                     "object": "event", "type": kind, "timestamp": timestamp,
                     "instance_id": vbase_stack::DEV_CLERK_INSTANCE});
        if let Some(user) = user {
            m["data"]["public_user_data"] = json!({"user_id": user, "identifier": "x@example.org",
                                                  "first_name": null, "last_name": null});
        }
        m
    };
    let anonymous = membership("organizationMembership.created", "org_shape", None, now_ms);
    let (code, body) = post("msg_shape_member", anonymous).await;
    assert_eq!((code, body.as_str()), (200, r#"{"outcome":"quarantined"}"#));
    let kept = "SELECT count(*) FROM quarantined_deliveries
                 WHERE svix_id = 'msg_shape_member' AND state = 'open' AND octet_length(body) > 0";
    assert_eq!(count(&s.workspace_db, kept).await, 1);
    let replay = {
        let mut cmd = s.gateway_command("replay-quarantined");
        cmd.args(["--all", "--json"]);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    };
    assert_eq!(replay.status.code(), Some(0));
    let summary: Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert_eq!(
        (
            summary["examined"].clone(),
            summary["still_refused"].clone()
        ),
        (json!(1), json!(1)),
        "replayable, and still refused with the current code: {summary}"
    );
    assert_eq!(
        count(&s.workspace_db, kept).await,
        1,
        "kept open with its body"
    );
    assert_eq!(
        count(
            &s.workspace_db,
            "SELECT count(*) FROM memberships WHERE clerk_org_id = 'org_shape'"
        )
        .await,
        0
    );

    // A removal whose envelope timestamp is in seconds.
    let secs = now_ms / 1000 - 30;
    let created = membership(
        "organizationMembership.created",
        "org_secs",
        Some("user_secs"),
        now_ms - 60_000,
    );
    assert_eq!(post("msg_secs_1", created).await.0, 200);
    let deleted = membership(
        "organizationMembership.deleted",
        "org_secs",
        Some("user_secs"),
        secs,
    );
    assert_eq!(post("msg_secs_2", deleted).await.0, 200);
    assert_eq!(
        count(
            &s.workspace_db,
            "SELECT extract(epoch FROM deleted_at)::bigint FROM memberships
              WHERE clerk_org_id = 'org_secs' AND clerk_user_id = 'user_secs' AND deleted"
        )
        .await,
        secs,
        "access ended when the envelope says, not in January 1970"
    );
    // The services recorded the instance of what they applied.
    for db in [&s.identity_db, &s.workspace_db] {
        assert_eq!(
            count(
                db,
                "SELECT count(*) FROM clerk_instances WHERE instance_id = 'ins_local'"
            )
            .await,
            1
        );
    }
    s.stop().await.unwrap();
}

/// One column of every row an admin command of PgBouncer's console answers.
async fn bouncer_column(
    console: &tokio_postgres::Client,
    command: &str,
    column: &str,
) -> Vec<String> {
    console
        .simple_query(command)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(column).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// Behind Debian's PgBouncer in session mode (what its version allows: before 1.21 it keeps no
/// prepared statements in transaction mode, deploy/README.md "Behind a pooler"), with
/// `DATABASE_DIRECT_URL` naming the server itself: the pools go through the pooler, the
/// notification connections go direct, and webhooks, user calls and workspace reads work.
#[tokio::test]
async fn the_services_work_behind_pgbouncer_and_listen_directly() {
    use ephemeral_postgres::{BouncerMode, PgBouncer, PgCluster, PgClusterOptions};
    let (cluster, bouncer) = tokio::task::spawn_blocking(|| {
        let cluster = PgCluster::start(PgClusterOptions::default()).unwrap();
        cluster.wait_ready(Duration::from_secs(30)).unwrap();
        let bouncer = PgBouncer::start(&cluster, BouncerMode::Session).unwrap();
        (cluster, bouncer)
    })
    .await
    .unwrap();
    let dir = tempfile_dir::Dir::new();
    let mut cfg = StackConfig::dev(bin_dir(), dir.path());
    cfg.database_url = Some(bouncer.url("postgres"));
    for (service, db) in [
        ("identity-service", "vbase_identity"),
        ("workspace-service", "vbase_workspace"),
    ] {
        cfg.extra_env.insert(
            service,
            vec![("DATABASE_DIRECT_URL".into(), cluster.url(db))],
        );
    }
    let stack = Stack::start(cfg)
        .await
        .expect("stack starts behind PgBouncer");
    let c = Client::new(&stack);
    let now_ms = token_auth::signing::now_secs() * 1000;

    c.deliver(
        "msg_pool_u",
        &user_event("user.created", "user_pool", "Pool", now_ms),
    )
    .await;
    c.deliver(
        "msg_pool_o",
        &org_event("organization.created", "org_pool", "Pool", now_ms),
    )
    .await;
    c.deliver(
        "msg_pool_m",
        &membership_event(
            "organizationMembership.created",
            "org_pool",
            "user_pool",
            "basic_member",
            now_ms,
        ),
    )
    .await;
    let mut ident = c.identity().await;
    let stored = ident
        .store_user(c.as_user("user_pool_2", None, "", idp::StoreUserRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(stored.created);
    let me = ident
        .get_current_user(c.as_user("user_pool", None, "", idp::GetCurrentUserRequest {}))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(me.name, "Pool");
    let channels = c
        .workspace()
        .await
        .list_channels(c.as_user(
            "user_pool",
            Some("org_pool"),
            "org:member",
            wsp::ListChannelsRequest {
                clerk_org_id: "org_pool".into(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .channels;
    assert_eq!(
        channels.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        vec!["general"]
    );

    // The pools are PgBouncer's clients, for both databases.
    let (console, conn) = tokio_postgres::connect(&bouncer.url("pgbouncer"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let client_dbs = bouncer_column(&console, "SHOW CLIENTS", "database").await;
    for db in ["vbase_identity", "vbase_workspace"] {
        assert!(
            client_dbs.iter().any(|d| d == db),
            "no pooled client of {db}: {client_dbs:?}"
        );
    }
    // The notification connections are not: no session that listens came through the pooler.
    let (server, conn) = tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let expected = BTreeSet::from([
        ("vbase_identity".to_owned(), "coherent-cache".to_owned()),
        ("vbase_workspace".to_owned(), "coherent-cache".to_owned()),
        ("vbase_workspace".to_owned(), "vbase-change-hub".to_owned()),
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let through_pooler: BTreeSet<i32> = bouncer_column(&console, "SHOW SERVERS", "local_port")
            .await
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        let listeners: Vec<(String, String, i32)> = server
            .query(
                "SELECT datname::text, application_name, client_port FROM pg_stat_activity
                  WHERE application_name IN ('coherent-cache', 'vbase-change-hub')",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        for (db, app, port) in &listeners {
            assert!(
                !through_pooler.contains(port),
                "the {app} connection of {db} came through PgBouncer"
            );
        }
        let seen: BTreeSet<(String, String)> = listeners
            .into_iter()
            .map(|(db, app, _)| (db, app))
            .collect();
        if seen == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "listening: {seen:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.stop().await.unwrap();
    drop((bouncer, cluster));
}
