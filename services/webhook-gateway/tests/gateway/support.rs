//! The stack every gateway test runs: real identity and workspace services on real Postgres,
//! the real gateway in front, and the signed events to send it.

use ephemeral_postgres::TestDatabase;
use serde_json::{Value, json};
use service_harness::{Issuers, RunningServer, eventually};
use service_runtime::LogFormat;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use vbase_proto::identity::v1 as idp;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;
use vbase_proto::ops::v1 as ops;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const NEXT_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

pub struct Stack {
    /// How the gateway reaches the services (reconcile runs use the same).
    pub downstream: webhook_gateway::DownstreamArgs,
    pub issuers: Issuers,
    pub _dbs: (TestDatabase, TestDatabase),
    pub identity_cfg: identity_service::Config,
    pub identity: Option<RunningServer>,
    pub workspace: RunningServer,
    pub gateway: RunningServer,
    pub http: reqwest::Client,
    /// Calls to `UpsertUsers` refused, when the gateway talks to an older identity-service.
    pub refused_batches: Option<Arc<AtomicUsize>>,
}

pub async fn stack(secrets: &str) -> Stack {
    stack_with(secrets, None, None, None).await
}

/// The path of `UpsertUsers`.
pub const UPSERT_USERS: &str = "/vbase.identity.v1.IdentityService/UpsertUsers";

/// An identity-service of another release (mid-rollout) that lacks the method at `missing`, such
/// as one from before `UpsertUsers` ([`UPSERT_USERS`]): an HTTP/2 proxy in front of the real one
/// that answers that method as a tonic server answers a method it does not have
/// (UNIMPLEMENTED, trailers only) and passes every other call through. Returns its address and
/// the count of calls it refused.
pub async fn older_identity(
    upstream: SocketAddr,
    missing: &'static str,
) -> (SocketAddr, Arc<AtomicUsize>) {
    use http_body_util::{Either, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&refused);
    tokio::spawn(async move {
        while let Ok((downstream, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(up))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (mut send, counter) = (send.clone(), Arc::clone(&counter));
                        async move {
                            if req.uri().path() == missing {
                                counter.fetch_add(1, Ordering::SeqCst);
                                let refusal = http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .header("grpc-status", "12")
                                    .header("grpc-message", "Method not found")
                                    .body(Either::Left(Empty::<bytes::Bytes>::new()))
                                    .unwrap();
                                return Ok::<_, hyper::Error>(refusal);
                            }
                            Ok(send.send_request(req).await?.map(Either::Right))
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(downstream), svc)
                    .await;
            });
        }
    });
    (addr, refused)
}

/// `token_file`: use `SERVICE_TOKEN_FILE` (a platform-mounted token) instead of the signing key.
/// `older`: the gateway reaches identity-service through [`older_identity`] without this method.
/// `custom_kid`: the services' JWKS names the gateway's key `(kid, _)`, and the gateway is
/// told so (`SERVICE_JWT_KEY_ID`) when the flag is true.
pub async fn stack_with(
    secrets: &str,
    token_file: Option<std::path::PathBuf>,
    older: Option<&'static str>,
    custom_kid: Option<(&str, bool)>,
) -> Stack {
    stack_tuned(secrets, token_file, older, custom_kid, |_| {}).await
}

/// [`stack_with`], with the gateway's settings changed by `tune` before it starts.
pub async fn stack_tuned(
    secrets: &str,
    token_file: Option<std::path::PathBuf>,
    older: Option<&'static str>,
    custom_kid: Option<(&str, bool)>,
    tune: impl FnOnce(&mut webhook_gateway::Config),
) -> Stack {
    let mut issuers = Issuers::new().await;
    if let Some((kid, _)) = custom_kid {
        issuers
            .keys
            .rename_key(token_auth::GATEWAY_SUBJECT, kid)
            .unwrap();
    }
    let idb = service_harness::database(
        "identity",
        &service_runtime::db::migrations_fingerprint(&identity_service::MIGRATIONS),
        |u| async move {
            identity_service::migrate(&u, &service_runtime::DbTls::system_roots())
                .await
                .map(|_| ())
        },
    )
    .await;
    let wdb = service_harness::database(
        "workspace",
        &service_runtime::db::migrations_fingerprint(&workspace_service::MIGRATIONS),
        |u| async move {
            workspace_service::migrate(&u, &service_runtime::DbTls::system_roots())
                .await
                .map(|_| ())
        },
    )
    .await;
    let identity_cfg = identity_service::Config {
        service: issuers.service_args(idb.url(), 8),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        group_commit_slots: 2,
        lookup_slots: 2,
        user_cache_bytes: 8 << 20,
        ledger: Default::default(),
        quotas: Default::default(),
    };
    let workspace_cfg = workspace_service::Config {
        service: issuers.service_args(wdb.url(), 8),
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
            purge_concurrency: 2,
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
    let ic = identity_cfg.clone();
    let identity = RunningServer::start(|l, s| identity_service::run(ic, l, s)).await;
    let workspace = RunningServer::start(|l, s| workspace_service::run(workspace_cfg, l, s)).await;
    let (identity_addr, refused_batches) = if let Some(missing) = older {
        let (addr, refused) = older_identity(identity.addr, missing).await;
        (addr, Some(refused))
    } else {
        (identity.addr, None)
    };
    let downstream = webhook_gateway::DownstreamArgs {
        identity_service_url: format!("http://{identity_addr}"),
        workspace_service_url: format!("http://{}", workspace.addr),
        service_jwt_issuer: "vbase-internal".into(),
        service_jwt_signing_key_file: if token_file.is_some() {
            None
        } else {
            Some(
                issuers
                    .keys
                    .signing_key_file_of(token_auth::GATEWAY_SUBJECT),
            )
        },
        service_token_file: token_file,
        service_jwt_key_id: custom_kid
            .filter(|(_, told)| *told)
            .map(|(kid, _)| kid.to_owned()),
        downstream_timeout_secs: 3,
    };
    let mut gateway_cfg = webhook_gateway::Config {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        clerk_webhook_secret: secrets.into(),
        downstream: downstream.clone(),
        identity_batch_slots: 4,
        request_read_timeout_secs: 1,
        max_connections: 64,
        max_body_bytes_in_flight: 32 << 20,
        shutdown_drain_secs: 20,
        quarantine_failed_after_secs: webhook_gateway::failed::DEFAULT_AFTER_SECS,
        log_format: LogFormat::Pretty,
    };
    tune(&mut gateway_cfg);
    let gateway = RunningServer::start(|l, s| webhook_gateway::run(gateway_cfg, l, s)).await;
    let s = Stack {
        downstream,
        issuers,
        _dbs: (idb, wdb),
        identity_cfg,
        identity: Some(identity),
        workspace,
        gateway,
        http: reqwest::Client::new(),
        refused_batches,
    };
    // Both services SERVING (keys loaded, databases reachable), as the gateway sees them.
    eventually("services serving", Duration::from_secs(20), || async {
        s.http
            .get(format!("http://{}/status", s.gateway.addr))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    s
}

pub fn now() -> i64 {
    token_auth::signing::now_secs()
}

impl Stack {
    pub async fn post_raw(&self, headers: &[(&str, String)], body: Vec<u8>) -> (u16, String) {
        let mut req = self
            .http
            .post(format!("http://{}/clerk", self.gateway.addr))
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    pub async fn send_signed(
        &self,
        secret: &str,
        id: &str,
        ts: i64,
        body: &Value,
    ) -> (u16, String) {
        let bytes = body.to_string().into_bytes();
        let sig = svix::webhooks::Webhook::new(secret)
            .unwrap()
            .sign(id, ts, &bytes)
            .unwrap();
        self.post_raw(
            &[
                ("svix-id", id.into()),
                ("svix-timestamp", ts.to_string()),
                ("svix-signature", sig),
            ],
            bytes,
        )
        .await
    }

    pub async fn send(&self, id: &str, body: &Value) -> (u16, String) {
        self.send_signed(SECRET, id, now(), body).await
    }

    /// The gateway's Prometheus text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.gateway.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Calls the gateway made to a downstream command (`upsert_users`, `upsert_user`, ...).
    pub async fn downstream_calls(&self, command: &str) -> f64 {
        let label = format!("command=\"{command}\"");
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("webhook_downstream_latency_seconds_count"))
            .filter(|l| l.contains(&label))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn identity(&self) -> IdentityServiceClient<tonic::transport::Channel> {
        IdentityServiceClient::new(self.identity.as_ref().unwrap().channel().await)
    }

    pub async fn workspace(&self) -> WorkspaceServiceClient<tonic::transport::Channel> {
        WorkspaceServiceClient::new(self.workspace.channel().await)
    }

    pub async fn user(&self, id: &str) -> Option<idp::User> {
        let mut c = self.identity().await;
        match c
            .get_user(self.issuers.service(
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

    pub async fn members(&self, org: &str) -> Vec<(String, String)> {
        let mut c = self.workspace().await;
        c.list_members(self.issuers.service(
            "workspace-service",
            wsp::ListMembersRequest {
                clerk_org_id: org.into(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .members
        .into_iter()
        .map(|m| (m.clerk_user_id, m.role))
        .collect()
    }

    pub async fn workspace_exists(&self, org: &str) -> bool {
        self.workspace_name(org).await.is_some()
    }
}

pub fn user_event(kind: &str, id: &str, first: &str, updated_at: i64) -> Value {
    json!({
        "data": {"id": id, "object": "user", "first_name": first, "last_name": "Example", "username": null,
                 "primary_email_address_id": "idn_2", "image_url": "https://img.clerk.com/x",
                 "email_addresses": [{"id": "idn_1", "email_address": "old@example.org", "object": "email_address"},
                                     {"id": "idn_2", "email_address": "primary@example.org", "object": "email_address"}],
                 "created_at": 1654012591514_i64, "updated_at": updated_at, "unknown_field": {"ignored": true}},
        "object": "event", "type": kind, "timestamp": updated_at, "instance_id": stand_ins::DEFAULT_INSTANCE,
        "event_attributes": {"http_request": {"client_ip": "", "user_agent": ""}}
    })
}

pub fn org_event(kind: &str, id: &str, name: &str, updated_at: i64) -> Value {
    json!({"data": {"id": id, "object": "organization", "name": name, "slug": "acme", "created_by": "user_owner",
                    "created_at": 1654013202977_i64, "updated_at": updated_at, "logo_url": null},
           "object": "event", "type": kind, "timestamp": updated_at})
}

pub fn membership_event(kind: &str, org: &str, user: &str, role: &str, updated_at: i64) -> Value {
    membership_event_of(
        kind,
        ("orgmem_1", 1654013203217),
        org,
        user,
        role,
        updated_at,
    )
}

/// A membership event of membership `(id, created_at)`.
pub fn membership_event_of(
    kind: &str,
    (id, created_at): (&str, i64),
    org: &str,
    user: &str,
    role: &str,
    updated_at: i64,
) -> Value {
    json!({"data": {"id": id, "object": "organization_membership", "role": role, "permissions": [],
                    "organization": {"id": org, "name": "Acme", "object": "organization", "created_at": 1, "updated_at": 1},
                    "public_user_data": {"user_id": user, "identifier": "x@example.org", "first_name": null, "last_name": null},
                    "created_at": created_at, "updated_at": updated_at},
           "object": "event", "type": kind, "timestamp": updated_at})
}

pub fn deleted_event(kind: &str, object: &str, id: &str, at: i64) -> Value {
    json!({"data": {"deleted": true, "id": id, "object": object}, "object": "event", "type": kind, "timestamp": at})
}

pub const T: i64 = 1_700_000_000_000;

impl Stack {
    pub fn workspace_db(&self) -> &str {
        self._dbs.1.url()
    }

    pub async fn workspace_name(&self, org: &str) -> Option<String> {
        let mut c = self.workspace().await;
        c.get_workspace(self.issuers.service(
            "workspace-service",
            wsp::GetWorkspaceRequest {
                clerk_org_id: org.into(),
            },
        ))
        .await
        .ok()
        .and_then(|r| r.into_inner().workspace)
        .map(|w| w.name)
    }
}

pub use webhook_gateway::quarantine::Owner;

pub use vbase_proto::ops::v1::delivery_admin_service_client::DeliveryAdminServiceClient;
pub use vbase_proto::ops::v1::delivery_intake_service_client::DeliveryIntakeServiceClient;

impl Stack {
    async fn channel_of(&self, owner: Owner) -> tonic::transport::Channel {
        match owner {
            Owner::Identity => self.identity.as_ref().unwrap().channel().await,
            Owner::Workspace => self.workspace.channel().await,
        }
    }

    /// The operators' ledger service of `owner` (calls need an operator token).
    pub async fn admin(
        &self,
        owner: Owner,
    ) -> DeliveryAdminServiceClient<tonic::transport::Channel> {
        DeliveryAdminServiceClient::new(self.channel_of(owner).await)
    }

    /// The gateway's ledger service of `owner` (calls need the gateway's token).
    pub async fn intake(
        &self,
        owner: Owner,
    ) -> DeliveryIntakeServiceClient<tonic::transport::Channel> {
        DeliveryIntakeServiceClient::new(self.channel_of(owner).await)
    }

    /// Quarantined deliveries of `owner` in `state`, as the operator lists them.
    pub async fn quarantined_in(
        &self,
        owner: Owner,
        state: ops::QuarantineState,
    ) -> Vec<ops::QuarantinedDelivery> {
        let req = self.issuers.operator(
            owner.audience(),
            ops::ListQuarantinedRequest {
                page_size: 500,
                state: state.into(),
                ..Default::default()
            },
        );
        let r = self.admin(owner).await.list_quarantined(req).await;
        r.unwrap().into_inner().deliveries
    }

    /// The svix ids of `owner`'s open quarantined deliveries, oldest first.
    pub async fn quarantined(&self, owner: Owner) -> Vec<String> {
        self.quarantined_in(owner, ops::QuarantineState::Open)
            .await
            .into_iter()
            .map(|d| d.svix_id)
            .collect()
    }

    /// One quarantined delivery with its body.
    pub async fn quarantined_one(&self, owner: Owner, id: &str) -> ops::QuarantinedDelivery {
        let req = self.issuers.operator(
            owner.audience(),
            ops::GetQuarantinedRequest { svix_id: id.into() },
        );
        let r = self.admin(owner).await.get_quarantined(req).await;
        r.unwrap().into_inner()
    }

    /// The gateway's clients of both services (what `replay-quarantined` uses).
    pub fn gateway_downstream(&self) -> webhook_gateway::forward::Downstream {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = webhook_gateway::metrics::Metrics::register(&mut registry);
        self.downstream.connect(metrics, 1).unwrap()
    }
}

/// The log lines of this test binary (JSON, the production format), from every test.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Installs the process-wide subscriber on first use and returns its sink. Process-wide: a
/// scoped one misses events that other tests' threads made the callsites' interest cache
/// decide. Nothing else in this binary installs one.
pub fn captured_logs() -> Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let sink = logs.clone();
        tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .json()
                .with_max_level(tracing::Level::DEBUG)
                .with_writer(move || sink.clone())
                .finish(),
        )
        .expect("no other subscriber in this test binary");
        logs
    })
    .clone()
}
