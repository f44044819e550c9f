//! Sends typed commands to the services over gRPC with service tokens, within a deadline.

use crate::clerk::Command;
use crate::metrics::{CommandLabels, Metrics};
use micro_batch::{MicroBatcher, SubmitError};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use token_auth::signing::ServiceTokenMinter;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use vbase_proto::identity::v1 as pb;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;
use vbase_proto::ops::v1::delivery_intake_service_client::DeliveryIntakeServiceClient;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;

/// Where the gateway's service tokens come from.
pub enum TokenSource {
    /// Minted per audience with our signing key.
    Minted(ServiceTokenMinter),
    /// A token file mounted by the platform, re-read when it changes.
    File {
        path: PathBuf,
        cached: Mutex<Option<(SystemTime, String)>>,
    },
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Minted(m) => f.debug_tuple("Minted").field(m).finish(),
            TokenSource::File { path, .. } => f.debug_struct("File").field("path", path).finish(),
        }
    }
}

impl TokenSource {
    /// A token for the service named `audience`.
    pub fn token_for(&self, audience: &str) -> Result<String, String> {
        match self {
            TokenSource::Minted(m) => m.token_for(audience).map_err(|e| e.to_string()),
            TokenSource::File { path, cached } => {
                let modified = std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .map_err(|e| format!("SERVICE_TOKEN_FILE unreadable: {e}"))?;
                let mut guard = cached
                    .lock()
                    .map_err(|_| "token cache poisoned".to_owned())?;
                if let Some((at, tok)) = guard.as_ref()
                    && *at == modified
                {
                    return Ok(tok.clone());
                }
                let tok = std::fs::read_to_string(path)
                    .map_err(|e| format!("SERVICE_TOKEN_FILE unreadable: {e}"))?
                    .trim()
                    .to_owned();
                *guard = Some((modified, tok.clone()));
                Ok(tok)
            }
        }
    }
}

/// Why forwarding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The service refused the content (INVALID_ARGUMENT): the delivery is quarantined and
    /// answered 200 (a retry would be refused the same way).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The service is unreachable, slow or failing for a moment ([`transient`]): answered 503
    /// so Svix retries later; reconcile repeats the call at once (with backoff).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call failed for a reason a prompt repeat does not change (FAILED_PRECONDITION,
    /// NOT_FOUND, INTERNAL ...): answered 503 while the event is young, so Svix retries once
    /// the cause is fixed, and quarantined once it is `QUARANTINE_FAILED_AFTER_SECS` old
    /// ([`crate::failed`]); reconcile stops at once; a replay keeps the delivery and goes on
    /// with the next.
    #[error("failed: {0}")]
    Failed(String),
    /// The service refused the gateway itself (UNAUTHENTICATED, PERMISSION_DENIED), or no
    /// service token could be made: every call fails alike until the configuration is fixed.
    /// Answered 503 whatever the event's age; reconcile and a replay stop at once.
    #[error("refused the gateway: {0}")]
    Denied(String),
}

impl ForwardError {
    /// Whether repeating the call soon may succeed ([`transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, ForwardError::Unavailable(_))
    }
}

/// Most `user.created`/`user.updated` commands per `UpsertUsers` call.
pub const USER_BATCH_MAX: usize = 64;

type UserBatcher = MicroBatcher<pb::UpsertUserCommand, Result<i32, ForwardError>>;

/// Whether a failed call may succeed when repeated soon: the service or the way to it failed
/// for a moment, not the request. UNAVAILABLE (a service restarting or draining, its database
/// failing over, a connection refused), DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED; CANCELLED,
/// which is how tonic reports an expired deadline (the channel's timeout on our side, the
/// service's `grpc-timeout` on its side: "Timeout expired"), as nothing here cancels a call
/// on purpose; and any status tonic made on our side from a transport error (a connection lost
/// mid-call: it carries that error as its source, where a status the service answered has
/// none). Never INVALID_ARGUMENT, FAILED_PRECONDITION, PERMISSION_DENIED, UNAUTHENTICATED,
/// NOT_FOUND, INTERNAL or the like: the service decided, and would decide the same again.
pub fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled
    ) || std::error::Error::source(s).is_some()
}

/// What a failed call means: INVALID_ARGUMENT is the content's fault (a webhook's delivery is
/// quarantined, 200); the gateway's token refused is [`ForwardError::Denied`]; a [`transient`]
/// failure is [`ForwardError::Unavailable`]; anything else [`ForwardError::Failed`] (all three
/// 503 for a webhook, until a failed one's event is old enough to quarantine it).
pub fn failure(command: &'static str, s: &Status) -> ForwardError {
    if s.code() == Code::InvalidArgument {
        return ForwardError::Rejected(s.message().to_owned());
    }
    if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) {
        tracing::error!(command, code = ?s.code(), reason = s.message(), "a service refused the gateway's token: check SERVICE_JWT_* / SERVICE_JWKS_FILE");
    }
    let reason = format!("{command}: {:?} {}", s.code(), s.message());
    if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) {
        return ForwardError::Denied(reason);
    }
    if transient(s) {
        ForwardError::Unavailable(reason)
    } else {
        ForwardError::Failed(reason)
    }
}

/// What every call needs: service tokens, the deadline, latency metrics; and the
/// identity-service client, which the batched upserts use too.
#[derive(Clone)]
struct Calls {
    identity: IdentityServiceClient<Channel>,
    tokens: Arc<TokenSource>,
    timeout: Duration,
    metrics: Metrics,
}

impl Calls {
    /// A request with the service token for `audience` and the deadline.
    fn request<T>(&self, audience: &str, msg: T) -> Result<Request<T>, ForwardError> {
        let token = self
            .tokens
            .token_for(audience)
            .map_err(ForwardError::Denied)?;
        let mut r = Request::new(msg);
        r.set_timeout(self.timeout);
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ForwardError::Denied("service token is not valid header text".into()))?;
        r.metadata_mut().insert("authorization", value);
        Ok(r)
    }

    fn observe(&self, command: &'static str, started: Instant) {
        self.metrics
            .downstream_latency
            .get_or_create(&CommandLabels { command })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records the call's latency and maps its result.
    fn map(
        &self,
        command: &'static str,
        started: Instant,
        r: Result<i32, Status>,
    ) -> Result<i32, ForwardError> {
        self.observe(command, started);
        r.map_err(|s| failure(command, &s))
    }

    /// One `UpsertUser` call.
    async fn upsert_user(&self, c: pb::UpsertUserCommand) -> Result<i32, ForwardError> {
        let started = Instant::now();
        let r = self
            .identity
            .clone()
            .upsert_user(self.request("identity-service", c)?)
            .await
            .map(|r| r.into_inner().outcome);
        self.map("upsert_user", started, r)
    }

    /// Several upserts as one `UpsertUsers` call: one result per command, in order, its
    /// outcome or why it failed.
    async fn upsert_users(
        &self,
        commands: Vec<pb::UpsertUserCommand>,
    ) -> Vec<Result<i32, ForwardError>> {
        let n = commands.len();
        let started = Instant::now();
        let req = match self.request(
            "identity-service",
            pb::UpsertUsersCommand {
                commands: commands.clone(),
            },
        ) {
            Ok(r) => r,
            Err(e) => return vec![Err(e); n],
        };
        let r = self.identity.clone().upsert_users(req).await;
        self.observe("upsert_users", started);
        let results = match r {
            Ok(resp) => resp.into_inner().results,
            // An identity-service without the batch call (mid-rollout): one call per command.
            Err(s) if s.code() == Code::Unimplemented => {
                return futures::future::join_all(
                    commands.into_iter().map(|c| self.upsert_user(c)),
                )
                .await;
            }
            Err(s) => return vec![Err(failure("upsert_users", &s)); n],
        };
        if results.len() != n {
            let e = ForwardError::Failed(format!(
                "UpsertUsers answered {} results for {n} commands",
                results.len()
            ));
            return vec![Err(e); n];
        }
        results
            .into_iter()
            .map(|r| match Code::from_i32(r.code) {
                Code::Ok => Ok(r.outcome),
                code => Err(failure("upsert_user", &Status::new(code, r.message))),
            })
            .collect()
    }
}

/// gRPC clients of both services.
#[derive(Clone)]
pub struct Downstream {
    channels: (Channel, Channel),
    workspace: WorkspaceServiceClient<Channel>,
    calls: Calls,
    /// Concurrent user upserts, coalesced into `UpsertUsers` calls.
    user_upserts: UserBatcher,
}

fn outcome_label(o: i32) -> &'static str {
    match o {
        1 => "applied",
        2 => "duplicate",
        3 => "stale",
        _ => "unknown",
    }
}

impl Downstream {
    /// Clients over lazily connected channels (the gateway starts even when services are down).
    pub fn new(
        identity_url: &str,
        workspace_url: &str,
        tokens: TokenSource,
        timeout: Duration,
        metrics: Metrics,
        user_batch_slots: usize,
    ) -> anyhow::Result<Self> {
        let channel = |url: &str| -> anyhow::Result<Channel> {
            Ok(Channel::from_shared(url.to_owned())?
                .connect_timeout(Duration::from_secs(3))
                .timeout(timeout)
                .connect_lazy())
        };
        let (i, w) = (channel(identity_url)?, channel(workspace_url)?);
        let calls = Calls {
            identity: IdentityServiceClient::new(i.clone()),
            tokens: Arc::new(tokens),
            timeout,
            metrics,
        };
        let batch = calls.clone();
        let user_upserts = MicroBatcher::start(user_batch_slots, USER_BATCH_MAX, move |cmds| {
            let batch = batch.clone();
            async move { batch.upsert_users(cmds).await }
        });
        Ok(Self {
            channels: (i, w.clone()),
            workspace: WorkspaceServiceClient::new(w),
            calls,
            user_upserts,
        })
    }

    /// The channels, for readiness checks.
    pub fn channels(&self) -> (Channel, Channel) {
        self.channels.clone()
    }

    /// A request to the service named `audience`, with the gateway's service token and the
    /// deadline.
    pub fn request<T>(&self, audience: &str, msg: T) -> Result<Request<T>, ForwardError> {
        self.calls.request(audience, msg)
    }

    /// The identity-service client (calls need [`Downstream::request`]).
    pub fn identity(&self) -> IdentityServiceClient<Channel> {
        self.calls.identity.clone()
    }

    /// The workspace-service client (calls need [`Downstream::request`]).
    pub fn workspace(&self) -> WorkspaceServiceClient<Channel> {
        self.workspace.clone()
    }

    /// The delivery ledger's intake of the service named `audience` (`identity-service` or
    /// `workspace-service`; calls need [`Downstream::request`]).
    pub fn intake(&self, audience: &str) -> DeliveryIntakeServiceClient<Channel> {
        let channel = if audience == "workspace-service" {
            &self.channels.1
        } else {
            &self.channels.0
        };
        DeliveryIntakeServiceClient::new(channel.clone())
    }

    fn map(
        &self,
        command: &'static str,
        started: Instant,
        r: Result<i32, Status>,
    ) -> Result<&'static str, ForwardError> {
        self.calls.map(command, started, r).map(outcome_label)
    }

    /// One user upsert, coalesced with others into an `UpsertUsers` call.
    async fn upsert_user(&self, c: pb::UpsertUserCommand) -> Result<&'static str, ForwardError> {
        match self.user_upserts.submit(c).await {
            Ok(r) => r.map(outcome_label),
            Err(SubmitError::Stopped(c)) => self.calls.upsert_user(c).await.map(outcome_label),
            Err(SubmitError::Lost) => Err(ForwardError::Unavailable(
                "the delivery's batch ended without its result".into(),
            )),
        }
    }

    /// Sends the command; returns the outcome label (`applied`, `duplicate`, `stale`, `ignored`).
    pub async fn send(&self, command: Command) -> Result<&'static str, ForwardError> {
        let t = Instant::now();
        let mut identity = self.calls.identity.clone();
        let mut workspace = self.workspace.clone();
        match command {
            Command::Ignored => Ok("ignored"),
            Command::UpsertUser(c) => self.upsert_user(c).await,
            // The revocation first: the upsert (which makes reconcile see the user as held)
            // never commits without it.
            Command::BanUser(upsert, revoke) => {
                let r = workspace
                    .revoke_user_tokens(self.request("workspace-service", revoke)?)
                    .await
                    .map(|r| r.into_inner().outcome);
                let first = self.map("revoke_user_tokens", t, r)?;
                let second = self.upsert_user(upsert).await?;
                Ok(if first == "applied" || second == "applied" {
                    "applied"
                } else {
                    second
                })
            }
            Command::DeleteUser(a, b) => {
                let r = identity
                    .delete_user(self.request("identity-service", a)?)
                    .await
                    .map(|r| r.into_inner().outcome);
                let first = self.map("delete_user", t, r)?;
                let t2 = Instant::now();
                let r = workspace
                    .remove_user(self.request("workspace-service", b)?)
                    .await
                    .map(|r| r.into_inner().outcome);
                let second = self.map("remove_user", t2, r)?;
                Ok(if first == "applied" || second == "applied" {
                    "applied"
                } else {
                    first
                })
            }
            Command::UpsertWorkspace(c) => {
                let r = workspace
                    .upsert_workspace(self.request("workspace-service", c)?)
                    .await
                    .map(|r| r.into_inner().outcome);
                self.map("upsert_workspace", t, r)
            }
            Command::DeleteWorkspace(c) => {
                let r = workspace
                    .delete_workspace(self.request("workspace-service", c)?)
                    .await
                    .map(|r| r.into_inner().outcome);
                self.map("delete_workspace", t, r)
            }
            Command::UpsertMembership(c) => {
                let r = workspace
                    .upsert_membership(self.request("workspace-service", c)?)
                    .await
                    .map(|r| r.into_inner().outcome);
                self.map("upsert_membership", t, r)
            }
            Command::DeleteMembership(c) => {
                let r = workspace
                    .delete_membership(self.request("workspace-service", c)?)
                    .await
                    .map(|r| r.into_inner().outcome);
                self.map("delete_membership", t, r)
            }
        }
    }
}
