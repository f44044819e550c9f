//! The serving code every service runs (`service_runtime::Serve`): several gRPC services on one
//! port, each behind its own access policy, all in reflection and health, and the two-step
//! shutdown that drains calls and then awaits the background workers.
//!
//! The two services here answer from fixed data: what is under test is the server around them.

use service_harness::Issuers;
use service_runtime::{GrpcServices, Lifecycle, Serve, Workers};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use token_auth::{Access, MethodPolicy};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use vbase_proto::identity::v1 as ipb;
use vbase_proto::workspace::v1 as wpb;

const AUDIENCE: &str = "test-service";
const IDENTITY: &str = "vbase.identity.v1.IdentityService";
const WORKSPACE: &str = "vbase.workspace.v1.WorkspaceService";

/// Methods this test does not call answer UNIMPLEMENTED. Written out in the shape
/// `async_trait` gives trait methods, because the attribute runs before this macro expands.
macro_rules! unimplemented_methods {
    ($($name:ident: $req:ty => $resp:ty),* $(,)?) => {
        $(fn $name<'life0, 'async_trait>(
            &'life0 self,
            _: Request<$req>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<$resp>, Status>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(std::future::ready(Err(Status::unimplemented(stringify!($name)))))
        })*
    };
}

struct Identity;

/// A `user_held` call has started.
static HELD_STARTED: AtomicBool = AtomicBool::new(false);
/// `user_held` calls may answer.
static HELD_RELEASED: AtomicBool = AtomicBool::new(false);

#[tonic::async_trait]
impl ipb::identity_service_server::IdentityService for Identity {
    /// Answers the id it was asked for; `user_slow` takes 500 ms (a call in flight),
    /// `user_slower` 1.5 s, `user_stuck` 30 s (a call that never ends in time), `user_held`
    /// until [`HELD_RELEASED`] (the max-age test's call in flight).
    async fn get_user(
        &self,
        req: Request<ipb::GetUserRequest>,
    ) -> Result<Response<ipb::GetUserResponse>, Status> {
        let id = req.into_inner().clerk_id;
        match id.as_str() {
            "user_slow" => tokio::time::sleep(Duration::from_millis(500)).await,
            "user_slower" => tokio::time::sleep(Duration::from_millis(1500)).await,
            "user_stuck" => tokio::time::sleep(Duration::from_secs(30)).await,
            "user_held" => {
                HELD_STARTED.store(true, Ordering::SeqCst);
                while !HELD_RELEASED.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            _ => {}
        }
        Ok(Response::new(ipb::GetUserResponse {
            user: Some(ipb::User {
                clerk_id: id,
                ..Default::default()
            }),
        }))
    }

    unimplemented_methods! {
        store_user: ipb::StoreUserRequest => ipb::StoreUserResponse,
        get_current_user: ipb::GetCurrentUserRequest => ipb::GetCurrentUserResponse,
        batch_get_users: ipb::BatchGetUsersRequest => ipb::BatchGetUsersResponse,
        upsert_user: ipb::UpsertUserCommand => ipb::UpsertUserResponse,
        upsert_users: ipb::UpsertUsersCommand => ipb::UpsertUsersResponse,
        delete_user: ipb::DeleteUserCommand => ipb::DeleteUserResponse,
        compare_users: ipb::CompareUsersRequest => ipb::CompareUsersResponse,
        list_unseen_users: ipb::ListUnseenRequest => ipb::ListUnseenResponse,
        finish_reconcile: ipb::FinishReconcileRequest => ipb::FinishReconcileResponse,
    }
}

struct Workspace;

#[tonic::async_trait]
impl wpb::workspace_service_server::WorkspaceService for Workspace {
    type WatchChannelStream = tokio_stream::Empty<Result<wpb::ChannelEvent, Status>>;
    type WatchWorkspaceStream = tokio_stream::Empty<Result<wpb::WorkspaceEvent, Status>>;

    async fn watch_workspace(
        &self,
        _req: Request<wpb::WatchWorkspaceRequest>,
    ) -> Result<Response<Self::WatchWorkspaceStream>, Status> {
        Err(Status::unimplemented("watch_workspace"))
    }

    async fn watch_channel(
        &self,
        _req: Request<wpb::WatchChannelRequest>,
    ) -> Result<Response<Self::WatchChannelStream>, Status> {
        Err(Status::unimplemented("watch_channel"))
    }

    async fn get_workspace(
        &self,
        req: Request<wpb::GetWorkspaceRequest>,
    ) -> Result<Response<wpb::GetWorkspaceResponse>, Status> {
        Ok(Response::new(wpb::GetWorkspaceResponse {
            workspace: Some(wpb::Workspace {
                clerk_org_id: req.into_inner().clerk_org_id,
                ..Default::default()
            }),
        }))
    }

    unimplemented_methods! {
        upsert_workspace: wpb::UpsertWorkspaceCommand => wpb::UpsertWorkspaceResponse,
        delete_workspace: wpb::DeleteWorkspaceCommand => wpb::DeleteWorkspaceResponse,
        upsert_membership: wpb::UpsertMembershipCommand => wpb::UpsertMembershipResponse,
        delete_membership: wpb::DeleteMembershipCommand => wpb::DeleteMembershipResponse,
        remove_user: wpb::RemoveUserCommand => wpb::RemoveUserResponse,
        revoke_user_tokens: wpb::RevokeUserTokensCommand => wpb::RevokeUserTokensResponse,
        compare_workspaces: wpb::CompareWorkspacesRequest => wpb::CompareResponse,
        compare_memberships: wpb::CompareMembershipsRequest => wpb::CompareResponse,
        list_unseen_workspaces: wpb::ListUnseenRequest => wpb::ListUnseenWorkspacesResponse,
        list_unseen_memberships: wpb::ListUnseenRequest => wpb::ListUnseenMembershipsResponse,
        finish_reconcile: wpb::FinishReconcileRequest => wpb::FinishReconcileResponse,
        list_members: wpb::ListMembersRequest => wpb::ListMembersResponse,
        create_channel: wpb::CreateChannelRequest => wpb::CreateChannelResponse,
        list_channels: wpb::ListChannelsRequest => wpb::ListChannelsResponse,
        rename_channel: wpb::RenameChannelRequest => wpb::RenameChannelResponse,
        delete_channel: wpb::DeleteChannelRequest => wpb::DeleteChannelResponse,
        post_message: wpb::PostMessageRequest => wpb::PostMessageResponse,
        list_messages: wpb::ListMessagesRequest => wpb::ListMessagesResponse,
        edit_message: wpb::EditMessageRequest => wpb::EditMessageResponse,
        delete_message: wpb::DeleteMessageRequest => wpb::DeleteMessageResponse,
        mark_channel_read: wpb::MarkChannelReadRequest => wpb::MarkChannelReadResponse,
        get_unread_counts: wpb::GetUnreadCountsRequest => wpb::GetUnreadCountsResponse,
        create_room: wpb::CreateRoomRequest => wpb::CreateRoomResponse,
        list_rooms: wpb::ListRoomsRequest => wpb::ListRoomsResponse,
        rename_room: wpb::RenameRoomRequest => wpb::RenameRoomResponse,
        delete_room: wpb::DeleteRoomRequest => wpb::DeleteRoomResponse,
        create_room_item: wpb::CreateRoomItemRequest => wpb::CreateRoomItemResponse,
        list_room_items: wpb::ListRoomItemsRequest => wpb::ListRoomItemsResponse,
        rename_room_item: wpb::RenameRoomItemRequest => wpb::RenameRoomItemResponse,
        delete_room_item: wpb::DeleteRoomItemRequest => wpb::DeleteRoomItemResponse,
        authorize_liveblocks_room: wpb::AuthorizeLiveblocksRoomRequest => wpb::AuthorizeLiveblocksRoomResponse,
        schedule_meeting: wpb::ScheduleMeetingRequest => wpb::ScheduleMeetingResponse,
        list_meetings: wpb::ListMeetingsRequest => wpb::ListMeetingsResponse,
        cancel_meeting: wpb::CancelMeetingRequest => wpb::CancelMeetingResponse,
    }
}

async fn status_of(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

#[tokio::test]
async fn one_server_serves_several_services_each_with_its_policy_and_stops_in_two_steps() {
    let issuers = Issuers::new().await;
    let db = service_harness::database("serving", "none", |_| async { Ok(()) }).await;
    let pool =
        service_runtime::db::build_pool(db.url(), 2, service_runtime::db::PlanCache::Auto).unwrap();
    let auth = Arc::new(issuers.auth_args().build(AUDIENCE).unwrap());
    let lifecycle = Lifecycle::default();
    let mut workers = Workers::default();
    // A worker that needs a moment to finish after the stop: `run` must wait for it.
    let worker_finished = Arc::new(AtomicBool::new(false));
    let (finished, stopped, shutting_down) = (
        Arc::clone(&worker_finished),
        lifecycle.stopped(),
        lifecycle.shutting_down(),
    );
    workers.spawn("slow-to-stop", async move {
        shutting_down.await;
        stopped.await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        finished.store(true, Ordering::SeqCst);
    });
    let services = GrpcServices::new()
        .add(
            ipb::identity_service_server::IdentityServiceServer::new(Identity),
            MethodPolicy::new(IDENTITY).allow("GetUser", Access::UserOrService),
        )
        .add(
            wpb::workspace_service_server::WorkspaceServiceServer::new(Workspace),
            MethodPolicy::new(WORKSPACE).allow("GetWorkspace", Access::Service),
        );
    let server = service_harness::RunningServer::start(move |listener, shutdown| {
        Serve {
            detail: Default::default(),
            start_gate: Default::default(),
            origins: Vec::new(),
            shutdown: Default::default(),
            listener,
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            registry: Default::default(),
            pool,
            auth,
            services,
            lifecycle,
            workers,
            limits: service_runtime::GrpcLimits::default(),
        }
        .run(shutdown)
    })
    .await;
    let channel = server.channel().await;
    let mut identity = ipb::identity_service_client::IdentityServiceClient::new(channel.clone());
    let mut workspace = wpb::workspace_service_client::WorkspaceServiceClient::new(channel.clone());
    let health = HealthClient::new(channel.clone());

    // Health follows the database for each service and for the server as a whole.
    service_harness::eventually("SERVING", Duration::from_secs(10), || {
        let mut h = health.clone();
        async move {
            for name in [IDENTITY, WORKSPACE, ""] {
                if status_of(&mut h, name).await != ServingStatus::Serving as i32 {
                    return false;
                }
            }
            true
        }
    })
    .await;

    // Both services answer on the one port, each under its own policy.
    let get_user = |id: &str| ipb::GetUserRequest {
        clerk_id: id.into(),
    };
    let get_ws = || wpb::GetWorkspaceRequest {
        clerk_org_id: "org_1".into(),
    };
    let user = identity
        .get_user(issuers.service(AUDIENCE, get_user("user_1")))
        .await
        .unwrap();
    assert_eq!(user.into_inner().user.unwrap().clerk_id, "user_1");
    identity
        .get_user(issuers.user("user_2", get_user("user_2")))
        .await
        .expect("GetUser accepts user tokens");
    let ws = workspace
        .get_workspace(issuers.service(AUDIENCE, get_ws()))
        .await
        .unwrap();
    assert_eq!(ws.into_inner().workspace.unwrap().clerk_org_id, "org_1");
    let denied = workspace
        .get_workspace(issuers.user("user_2", get_ws()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let undeclared = workspace
        .list_rooms(issuers.service(AUDIENCE, wpb::ListRoomsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(undeclared.code(), Code::PermissionDenied, "{undeclared:?}");
    let unauthenticated = identity.get_user(get_user("user_1")).await.unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);

    // Reflection lists both services.
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            channel.clone(),
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(
        tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(
            list,
        ),
    ) = answer.message_response
    else {
        panic!("not a list of services: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in [IDENTITY, WORKSPACE, "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }

    // Shutdown while a call is in flight: the call completes, and `run` returns only after
    // the worker that needs a moment to stop has finished.
    let mut slow = identity.clone();
    let slow_token = issuers.service(AUDIENCE, get_user("user_slow"));
    let in_flight = tokio::spawn(async move { slow.get_user(slow_token).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = tokio::spawn(server.stop());
    service_harness::eventually("NOT_SERVING while draining", Duration::from_secs(5), || {
        let mut h = health.clone();
        async move { status_of(&mut h, WORKSPACE).await != ServingStatus::Serving as i32 }
    })
    .await;
    let answered = in_flight
        .await
        .unwrap()
        .expect("the call in flight completes");
    assert_eq!(answered.into_inner().user.unwrap().clerk_id, "user_slow");
    stop.await.unwrap().unwrap();
    assert!(
        worker_finished.load(Ordering::SeqCst),
        "run returned before its worker had stopped"
    );
}

/// What one server admits: calls per connection, the time of a call, connections at once.
#[tokio::test]
async fn the_server_bounds_streams_call_time_and_connections() {
    // GetUser counts as a write here, to see the per-user write rate.
    let (server, issuers) = limited_server(
        service_runtime::GrpcLimits {
            max_connections: 3,
            max_concurrent_streams: 2,
            request_timeout_secs: 1,
            keepalive_secs: 60,
            user_writes_per_minute: 3,
            ..service_runtime::GrpcLimits::default()
        },
        &["GetUser"],
    )
    .await;
    let url = format!("http://{}", server.addr);
    let connect = || async {
        let channel = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect_lazy();
        ipb::identity_service_client::IdentityServiceClient::new(channel)
    };
    let get = |id: &str| {
        let mut r = issuers.service(
            AUDIENCE,
            ipb::GetUserRequest {
                clerk_id: id.into(),
            },
        );
        r.set_timeout(Duration::from_secs(10));
        r
    };

    // Two calls at a time on one connection: four 500 ms calls take two rounds. (The first call
    // brings the server's SETTINGS; calls sent before them, beyond the limit, are refused with
    // REFUSED_STREAM, which a client may retry.)
    let one = connect().await;
    one.clone().get_user(get("user_1")).await.unwrap();
    let started = std::time::Instant::now();
    let calls = (0..4).map(|_| {
        let mut c = one.clone();
        let r = get("user_slow");
        async move { c.get_user(r).await }
    });
    for r in futures::future::join_all(calls).await {
        r.expect("each call is answered");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(950),
        "4 calls of 500 ms with 2 streams per connection took {took:?}"
    );

    // A call past GRPC_REQUEST_TIMEOUT_SECS is ended by the server.
    let started = std::time::Instant::now();
    let stuck = one.clone().get_user(get("user_stuck")).await.unwrap_err();
    assert!(
        matches!(stuck.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{stuck:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Three connections at once (this one and two more); a fourth waits until one closes.
    let (mut two, mut three) = (connect().await, connect().await);
    two.get_user(get("user_1")).await.unwrap();
    three.get_user(get("user_1")).await.unwrap();
    let mut four = connect().await;
    let mut waiting = get("user_1");
    waiting.set_timeout(Duration::from_millis(700));
    let refused = four.get_user(waiting).await.unwrap_err();
    assert!(
        matches!(
            refused.code(),
            Code::DeadlineExceeded | Code::Cancelled | Code::Unavailable
        ),
        "{refused:?}"
    );
    drop(two);
    service_harness::eventually(
        "the fourth connection is served",
        Duration::from_secs(10),
        || {
            let mut four = four.clone();
            let mut r = get("user_1");
            r.set_timeout(Duration::from_millis(500));
            async move { four.get_user(r).await.is_ok() }
        },
    )
    .await;

    // A user's writes: three a minute here; the fourth is refused with when to retry; another
    // user and internal callers are not affected.
    let as_user = |user: &str| {
        issuers.user(
            user,
            ipb::GetUserRequest {
                clerk_id: user.into(),
            },
        )
    };
    for _ in 0..3 {
        one.clone().get_user(as_user("user_w")).await.unwrap();
    }
    let limited = one.clone().get_user(as_user("user_w")).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    let retry_after: u64 = limited
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("retry-after");
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert!(limited.metadata().get("grpc-retry-pushback-ms").is_some());
    one.clone().get_user(as_user("user_other")).await.unwrap();
    for _ in 0..5 {
        one.clone().get_user(get("user_1")).await.unwrap();
    }
    server.stop().await.unwrap();
}

/// Starts a server with `limits` serving the fixed identity service, `writes` marked as writes.
async fn limited_server(
    limits: service_runtime::GrpcLimits,
    writes: &[&str],
) -> (service_harness::RunningServer, Issuers) {
    let issuers = Issuers::new().await;
    let db = service_harness::database("serving", "none", |_| async { Ok(()) }).await;
    let pool =
        service_runtime::db::build_pool(db.url(), 2, service_runtime::db::PlanCache::Auto).unwrap();
    let auth = Arc::new(issuers.auth_args().build(AUDIENCE).unwrap());
    let services = GrpcServices::new().add(
        ipb::identity_service_server::IdentityServiceServer::new(Identity),
        MethodPolicy::new(IDENTITY)
            .allow("GetUser", Access::UserOrService)
            .writes(writes),
    );
    let server = service_harness::RunningServer::start(move |listener, shutdown| {
        let _db = db;
        Serve {
            detail: Default::default(),
            start_gate: Default::default(),
            origins: Vec::new(),
            shutdown: Default::default(),
            listener,
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            registry: Default::default(),
            pool,
            auth,
            services,
            lifecycle: Lifecycle::default(),
            workers: Workers::default(),
            limits,
        }
        .run(shutdown)
    })
    .await;
    (server, issuers)
}

/// One HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads frames until the connection closes or `within` passes; returns the GOAWAY error codes
/// seen and whether the server closed the connection.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    within: Duration,
) -> (Vec<u32>, bool) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    let mut goaways = Vec::new();
    let mut at = 0;
    while at + 9 <= buf.len() {
        let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
        if at + 9 + len > buf.len() {
            break;
        }
        if buf[at + 3] == 0x7 && len >= 8 {
            let p = &buf[at + 9..at + 9 + len];
            goaways.push(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        at += 9 + len;
    }
    (goaways, closed)
}

/// HTTP/2 rapid reset (CVE-2023-44487): a client that opens streams and resets them at once
/// gets GOAWAY ENHANCE_YOUR_CALM and its connection closed; a peer that does not answer the
/// keepalive ping is disconnected.
#[tokio::test]
async fn rapid_resets_and_silent_peers_lose_their_connection() {
    use tokio::io::AsyncWriteExt;
    let (server, _issuers) = limited_server(
        service_runtime::GrpcLimits {
            keepalive_secs: 3,
            ..service_runtime::GrpcLimits::default()
        },
        &[],
    )
    .await;
    // Headers of a POST to GetUser (HPACK: indexed :method POST, :scheme http, literal :path
    // and :authority), each stream reset straight away, 200 of them in one write.
    let path = b"/vbase.identity.v1.IdentityService/GetUser";
    let mut headers = vec![0x83, 0x86, 0x04, path.len() as u8];
    headers.extend_from_slice(path);
    headers.extend_from_slice(&[0x01, 0x01, b'a']);
    let mut burst = PREFACE.to_vec();
    burst.extend(frame(0x4, 0, 0, &[]));
    for i in 0..200u32 {
        let id = 2 * i + 1;
        burst.extend(frame(0x1, 0x4, id, &headers));
        burst.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    let mut attacker = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    attacker.write_all(&burst).await.unwrap();
    let (goaways, closed) = read_until_closed(&mut attacker, Duration::from_secs(5)).await;
    assert!(
        goaways.contains(&0xb),
        "GOAWAY ENHANCE_YOUR_CALM expected, got {goaways:?}"
    );
    assert!(closed, "the connection is closed");

    // A peer that completes the handshake, then never reads: pinged every 3 s, given 1 s.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    silent.write_all(&hello).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(3)).await;
    assert!(closed, "a peer that answers no ping is disconnected");
    server.stop().await.unwrap();
}

/// HTTP/2 "MadeYouReset" (CVE-2025-8671): a client whose frames make the server reset streams
/// itself (here a WINDOW_UPDATE that overflows each new stream's send window) gets GOAWAY
/// ENHANCE_YOUR_CALM once it passes `MAX_LOCAL_ERROR_RESET_STREAMS`, and its connection closed.
#[tokio::test]
async fn streams_the_server_must_reset_close_the_connection_past_the_limit() {
    use tokio::io::AsyncWriteExt;
    let (server, _issuers) = limited_server(service_runtime::GrpcLimits::default(), &[]).await;
    // HPACK: indexed :method POST, :scheme http, :path /.
    let headers = [0x83, 0x86, 0x84];
    let mut burst = PREFACE.to_vec();
    burst.extend(frame(0x4, 0, 0, &[]));
    let streams = service_runtime::limits::MAX_LOCAL_ERROR_RESET_STREAMS as u32 + 100;
    for i in 0..streams {
        let id = 2 * i + 1;
        burst.extend(frame(0x1, 0x4 | 0x1, id, &headers));
        burst.extend(frame(0x8, 0, id, &0x7fff_ffffu32.to_be_bytes()));
    }
    let mut attacker = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    attacker.write_all(&burst).await.unwrap();
    let (goaways, closed) = read_until_closed(&mut attacker, Duration::from_secs(5)).await;
    assert!(
        goaways.contains(&0xb),
        "GOAWAY ENHANCE_YOUR_CALM expected, got {goaways:?}"
    );
    assert!(closed, "the connection is closed");
    server.stop().await.unwrap();
}

/// A channel to `addr` that counts the TCP connections it opens.
fn counting_channel(
    addr: std::net::SocketAddr,
) -> (
    tonic::transport::Channel,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let connects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&connects);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let stream = tokio::net::TcpStream::connect(addr).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }));
    (channel, connects)
}

/// A peer that sends nothing, stops inside the HTTP/2 preface, sends the preface but not its
/// first frame, or stops inside its first HTTP/1 head is cut off once the handshake deadline
/// passes, and its connection permit serves the next client (one permit here). A client that
/// completed its handshake keeps its idle connection past that deadline (within the idle limit).
#[tokio::test]
async fn silent_peers_lose_their_connection_after_the_handshake_deadline() {
    use tokio::io::AsyncWriteExt;
    let (server, issuers) = limited_server(
        service_runtime::GrpcLimits {
            max_connections: 1,
            handshake_timeout_secs: 1,
            max_connection_idle_secs: 5,
            ..service_runtime::GrpcLimits::default()
        },
        &[],
    )
    .await;
    let get = |id: &str| {
        let mut r = issuers.service(
            AUDIENCE,
            ipb::GetUserRequest {
                clerk_id: id.into(),
            },
        );
        r.set_timeout(Duration::from_secs(10));
        r
    };
    let openers: [(&str, &[u8]); 4] = [
        ("nothing", b""),
        ("part of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        ("the preface without its first frame", PREFACE),
        (
            "part of an HTTP/1 head",
            b"POST /vbase.identity.v1.IdentityService/GetUser HTTP/1.1\r\nhost: a\r\n",
        ),
    ];
    for (what, opener) in openers {
        let mut peer = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        peer.write_all(opener).await.unwrap();
        let started = std::time::Instant::now();
        // The only permit is the peer's: a real client waits until the peer is cut off.
        let (channel, _) = counting_channel(server.addr);
        let mut client = ipb::identity_service_client::IdentityServiceClient::new(channel);
        let request = get("user_1");
        let waiting = tokio::spawn(async move { client.get_user(request).await });
        let (_, closed) = read_until_closed(&mut peer, Duration::from_secs(5)).await;
        assert!(closed, "{what}: the peer still holds its connection");
        let cut = started.elapsed();
        assert!(
            cut >= Duration::from_millis(800),
            "{what}: cut after {cut:?}"
        );
        waiting
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: the next client is not served: {e:?}"));
    }

    // A client that completed its handshake keeps its connection while idle, within the idle
    // limit (5 s here).
    let (channel, connects) = counting_channel(server.addr);
    let mut client = ipb::identity_service_client::IdentityServiceClient::new(channel);
    client.get_user(get("user_1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.get_user(get("user_2")).await.unwrap();
    assert_eq!(
        connects.load(Ordering::SeqCst),
        1,
        "the idle connection was closed"
    );
    server.stop().await.unwrap();
}

/// A connection past its maximum age is closed gracefully: the call in flight when it reaches
/// the age completes, and the next call goes over a new connection. One that is still busy after
/// the grace is cut.
#[tokio::test]
async fn a_connection_past_its_max_age_is_closed_gracefully_then_cut_after_the_grace() {
    let (server, issuers) = limited_server(
        service_runtime::GrpcLimits {
            max_connection_age_secs: 2,
            max_connection_age_grace_secs: 6,
            ..service_runtime::GrpcLimits::default()
        },
        &[],
    )
    .await;
    let get = |id: &str| {
        let mut r = issuers.service(
            AUDIENCE,
            ipb::GetUserRequest {
                clerk_id: id.into(),
            },
        );
        r.set_timeout(Duration::from_secs(20));
        r
    };
    let (channel, connects) = counting_channel(server.addr);
    let client = ipb::identity_service_client::IdentityServiceClient::new(channel);
    let opened = std::time::Instant::now();
    client.clone().get_user(get("user_1")).await.unwrap();
    // A call in flight on that connection, held until the connection is past its age (2 s).
    let held = tokio::spawn({
        let mut c = client.clone();
        let r = get("user_held");
        async move { c.get_user(r).await }
    });
    service_harness::eventually("the held call started", Duration::from_secs(10), || async {
        HELD_STARTED.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(connects.load(Ordering::SeqCst), 1);
    let aged = opened + Duration::from_millis(2500);
    tokio::time::sleep_until(aged.into()).await;
    HELD_RELEASED.store(true, Ordering::SeqCst);
    let answered = held
        .await
        .unwrap()
        .expect("the call in flight at the maximum age completes");
    assert_eq!(answered.into_inner().user.unwrap().clerk_id, "user_held");
    assert_eq!(
        connects.load(Ordering::SeqCst),
        1,
        "the held call was answered on its own connection"
    );
    // The next call goes over a new connection, long before the grace ends (8 s), so not
    // because the connection was cut.
    service_harness::eventually(
        "the next call goes over a new connection",
        Duration::from_secs(30),
        || {
            let mut c = client.clone();
            let r = get("user_1");
            let connects = Arc::clone(&connects);
            async move { c.get_user(r).await.is_ok() && connects.load(Ordering::SeqCst) == 2 }
        },
    )
    .await;
    assert!(
        opened.elapsed() < Duration::from_secs(7),
        "the new connection came only at the grace's end (8 s): {:?}",
        opened.elapsed()
    );

    // On the new connection, a call that outlasts age and grace (2 + 6 s) is cut then.
    let started = std::time::Instant::now();
    let cut = client
        .clone()
        .get_user(get("user_stuck"))
        .await
        .expect_err("a call past the grace is cut");
    assert!(
        !matches!(cut.code(), Code::DeadlineExceeded | Code::Cancelled),
        "ended by a timeout instead: {cut:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    server.stop().await.unwrap();
}

/// The stop keeps to its budgets (`SHUTDOWN_DRAIN_SECS`, `SHUTDOWN_WORKER_STOP_SECS`): a call
/// that never ends and a worker that never stops hold it no longer than the two together.
#[tokio::test]
async fn the_stop_keeps_to_its_drain_and_worker_budgets() {
    let issuers = Issuers::new().await;
    let db = service_harness::database("serving", "none", |_| async { Ok(()) }).await;
    let pool =
        service_runtime::db::build_pool(db.url(), 2, service_runtime::db::PlanCache::Auto).unwrap();
    let auth = Arc::new(issuers.auth_args().build(AUDIENCE).unwrap());
    let mut workers = Workers::default();
    workers.spawn("never-stops", std::future::pending());
    let services = GrpcServices::new().add(
        ipb::identity_service_server::IdentityServiceServer::new(Identity),
        MethodPolicy::new(IDENTITY).allow("GetUser", Access::UserOrService),
    );
    let server = service_harness::RunningServer::start(move |listener, shutdown| {
        let _db = db;
        Serve {
            detail: Default::default(),
            start_gate: Default::default(),
            origins: Vec::new(),
            shutdown: service_runtime::ShutdownArgs {
                shutdown_drain_secs: 1,
                shutdown_worker_stop_secs: 1,
            },
            listener,
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            registry: Default::default(),
            pool,
            auth,
            services,
            lifecycle: Lifecycle::default(),
            workers,
            limits: service_runtime::GrpcLimits::default(),
        }
        .run(shutdown)
    })
    .await;
    let mut client =
        ipb::identity_service_client::IdentityServiceClient::new(server.channel().await);
    let stuck = issuers.service(
        AUDIENCE,
        ipb::GetUserRequest {
            clerk_id: "user_stuck".into(),
        },
    );
    let in_flight = tokio::spawn(async move { client.get_user(stuck).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    server.stop().await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "the stop took {took:?}");
    assert!(
        took >= Duration::from_millis(1800),
        "the stop took only {took:?}"
    );
    // (The process exits here; in this test the call's task outlives `run`.)
    in_flight.abort();
}

/// A v1 reflection request, as framed on the wire.
fn reflection_message(
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> bytes::Bytes {
    service_harness::grpc_frame(&tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    })
}

/// Lists the services by reflection v1alpha (what grpcurl 1.8 speaks), in one short call.
async fn list_by_reflection(channel: tonic::transport::Channel) -> Result<Vec<String>, Status> {
    use tonic_reflection::pb::v1alpha as rpb;
    let request = rpb::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            rpb::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = rpb::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let answer = answers.message().await?.expect("an answer");
    match answer.message_response {
        Some(rpb::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("not a list of services: {other:?}"),
    }
}

/// Reflection needs no token and streams for as long as its client keeps its request open. One
/// replica serves at most GRPC_REFLECTION_MAX_CALLS at once (v1 and v1alpha together; the next
/// is refused with RESOURCE_EXHAUSTED at once), and each call is reset at its deadline
/// (GRPC_REFLECTION_CALL_SECS) whether its client sent nothing or left its answers unread; its
/// place then serves the next call. A client that grants no window at all, so that hyper holds
/// its answer without polling it again, loses its connection a second after the deadline.
#[tokio::test]
async fn reflection_calls_are_capped_per_replica_and_reset_at_their_deadline() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let (server, _issuers) = limited_server(
        service_runtime::GrpcLimits {
            reflection_max_calls: 4,
            reflection_call_secs: 2,
            ..service_runtime::GrpcLimits::default()
        },
        &[],
    )
    .await;
    // A client with 16 KiB windows that never reads (so never grants window back).
    let (mut client, _connection) = service_harness::stingy_h2_client(server.addr).await;
    // One call that sends nothing, one that asks for the list, one that asks for a file larger
    // than the window; none ends its request.
    let asks = [
        None,
        Some(MessageRequest::ListServices(String::new())),
        Some(MessageRequest::FileContainingSymbol(IDENTITY.into())),
    ];
    let reflection_head = || {
        http::Request::post(format!(
            "http://{}/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            server.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
    };
    let opened = std::time::Instant::now();
    let mut held = Vec::new();
    for ask in asks {
        let (answer, mut request) = client.send_request(reflection_head(), false).unwrap();
        if let Some(ask) = ask {
            request.send_data(reflection_message(ask), false).unwrap();
        }
        let answer = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("the reflection call is answered")
            .unwrap();
        assert_eq!(answer.status(), 200);
        held.push((answer, request));
    }

    // A fourth, from a client with no window at all, asking for the file.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (stuck_client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let stuck_closed = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let closed = Arc::clone(&stuck_closed);
        async move {
            let _ = connection.await;
            closed.store(true, Ordering::SeqCst);
        }
    });
    let mut stuck_client = stuck_client.ready().await.unwrap();
    let (stuck, mut stuck_request) = stuck_client.send_request(reflection_head(), false).unwrap();
    stuck_request
        .send_data(
            reflection_message(MessageRequest::FileContainingSymbol(IDENTITY.into())),
            false,
        )
        .unwrap();
    let stuck = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("the reflection call is answered")
        .unwrap();
    assert_eq!(stuck.status(), 200);

    // The fifth call, v1alpha on another connection, is refused at once.
    let refused = tokio::time::timeout(
        Duration::from_secs(1),
        list_by_reflection(server.channel().await),
    )
    .await
    .expect("refused at once")
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("GRPC_REFLECTION_MAX_CALLS"),
        "{refused:?}"
    );

    // Each held call is reset at its deadline (2 s).
    for (i, (answer, _request)) in held.into_iter().enumerate() {
        let mut body = answer.into_body();
        let end = tokio::time::timeout(Duration::from_secs(6), async {
            loop {
                match body.data().await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Some(e),
                    None => return None,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("call {i} is still open after {:?}", opened.elapsed()));
        let reset = end.unwrap_or_else(|| panic!("call {i} ended without a reset"));
        assert_eq!(
            reset.reason(),
            Some(h2::Reason::CANCEL),
            "call {i}: {reset:?}"
        );
        assert!(
            opened.elapsed() >= Duration::from_millis(1800),
            "call {i} ended early: {:?}",
            opened.elapsed()
        );
    }
    assert!(
        opened.elapsed() < Duration::from_secs(6),
        "{:?}",
        opened.elapsed()
    );
    service_harness::eventually(
        "the connection holding an answer without window is cut",
        Duration::from_secs(5),
        || {
            let closed = Arc::clone(&stuck_closed);
            async move { closed.load(Ordering::SeqCst) }
        },
    )
    .await;
    assert!(
        opened.elapsed() >= Duration::from_millis(2800),
        "cut early: {:?}",
        opened.elapsed()
    );
    drop((stuck, stuck_request, stuck_client));

    // Their places serve the next calls.
    service_harness::eventually(
        "reflection serves again",
        Duration::from_secs(5),
        || async {
            list_by_reflection(server.channel().await)
                .await
                .is_ok_and(|names| names.iter().any(|n| n == IDENTITY))
        },
    )
    .await;
    server.stop().await.unwrap();
}

/// An HTTP/2 connection from the h2 client (which answers pings), and a flag set once it closed.
async fn h2_connection(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::PingPong,
    Arc<AtomicBool>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let pings = connection.ping_pong().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&closed);
    tokio::spawn(async move {
        let _ = connection.await;
        flag.store(true, Ordering::SeqCst);
    });
    (client.ready().await.unwrap(), pings, closed)
}

/// A connection with no call in flight for GRPC_MAX_CONNECTION_IDLE_SECS is closed, whatever its
/// pings, and its permit serves the next client (one permit here); one with a call in flight
/// stays past the limit, and is closed once the call has ended and the limit passed again.
#[tokio::test]
async fn idle_connections_are_closed_and_their_permit_serves_the_next_client() {
    let (server, issuers) = limited_server(
        service_runtime::GrpcLimits {
            max_connections: 1,
            max_connection_idle_secs: 2,
            ..service_runtime::GrpcLimits::default()
        },
        &[],
    )
    .await;
    // Handshaken, sends nothing but pings (every 300 ms, each answered).
    let opened = std::time::Instant::now();
    let (_client, mut pings, closed) = h2_connection(server.addr).await;
    while !closed.load(Ordering::SeqCst) && opened.elapsed() < Duration::from_secs(6) {
        let _ =
            tokio::time::timeout(Duration::from_millis(300), pings.ping(h2::Ping::opaque())).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        closed.load(Ordering::SeqCst),
        "an idle connection that only pings is still open after {:?}",
        opened.elapsed()
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(1800),
        "closed early: {:?}",
        opened.elapsed()
    );
    let mut next = ipb::identity_service_client::IdentityServiceClient::new(server.channel().await);
    let mut request = issuers.service(
        AUDIENCE,
        ipb::GetUserRequest {
            clerk_id: "user_1".into(),
        },
    );
    request.set_timeout(Duration::from_secs(3));
    next.get_user(request)
        .await
        .expect("the next client is served");
    drop(next);

    // A reflection call in flight (below its 10 s deadline) keeps its connection past the
    // idle limit; the connection closes once the call ended and the limit passed again. (It is
    // accepted once the client above has let go of the only permit.)
    let (mut client, _pings, closed) = h2_connection(server.addr).await;
    let head = http::Request::post(format!(
        "http://{}/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (answer, request) = client.send_request(head, false).unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !closed.load(Ordering::SeqCst),
        "a connection with a call in flight was closed as idle"
    );
    // The client cancels the call (RST_STREAM); the connection is idle from then on.
    drop((answer, request));
    let ended = std::time::Instant::now();
    service_harness::eventually(
        "the connection is closed once idle",
        Duration::from_secs(5),
        || {
            let closed = Arc::clone(&closed);
            async move { closed.load(Ordering::SeqCst) }
        },
    )
    .await;
    assert!(
        ended.elapsed() >= Duration::from_millis(1500),
        "closed {:?} after the call ended",
        ended.elapsed()
    );
    server.stop().await.unwrap();
}
