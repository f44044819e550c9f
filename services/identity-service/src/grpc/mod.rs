//! `vbase.identity.v1.IdentityService`: validates input, calls the domain, maps the result.
//! The handlers are grouped by what calls them: [`client`] (`StoreUser` and the reads),
//! [`sync`] (the gateway's commands), [`reconciling`] (the reconcile methods). The quarantine
//! and Clerk-instance methods are `delivery-ledger`'s services, mounted beside this one.

mod client;
mod reconciling;
mod sync;

use crate::batch::{UpsertBatcher, UserLookups};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::reconcile;
use crate::users::{self, Outcome, UserRecord};
use input_validation as validate;
use service_runtime::Pool;
use service_runtime::replica::{Lsn, OwnWrites, ReadPool};
use std::collections::{HashMap, HashSet};
use token_auth::{Access, MethodPolicy, Principal};
use tonic::{Request, Response, Status};
use vbase_proto::identity::v1 as pb;
use vbase_proto::identity::v1::identity_service_server::IdentityService;

/// Most ids one BatchGetUsers call may ask for.
pub const MAX_BATCH: usize = 500;

/// The largest request a user may send: [`MAX_BATCH`] ids of the longest kind (64 bytes and
/// two of framing each, 33,000 bytes) fit twice over; tonic alone would take 4 MiB.
pub const MAX_USER_REQUEST: usize = 64 * 1024;

/// The largest request `IdentityService` decodes, from any caller (users are held to
/// [`MAX_USER_REQUEST`] before that). The largest legitimate ones are the gateway's:
/// `CompareUsers` pages (at most 500 users, `CLERK_API_PAGE_SIZE`; about 1.7 MiB when every
/// field is as long as the service accepts), and an `UpsertUsers` batch (at most 64 from the
/// gateway; valid commands are under 4 KiB) holding one command copied from a webhook body of
/// up to 1 MiB, which must decode so that only that command is refused.
pub const MAX_REQUEST: usize = 2 * 1024 * 1024;

/// The methods that read: a user's calls to them count against `USER_READS_PER_MINUTE`.
pub const READ_METHODS: &[&str] = &["GetCurrentUser", "GetUser", "BatchGetUsers"];

/// Who may call which method.
pub fn policy() -> MethodPolicy {
    MethodPolicy::new(crate::SERVICE_NAME)
        .allow("StoreUser", Access::User)
        .allow("GetCurrentUser", Access::User)
        .allow("GetUser", Access::UserOrService)
        .allow("BatchGetUsers", Access::UserOrService)
        .allow("UpsertUser", Access::Service)
        .allow("UpsertUsers", Access::Service)
        .allow("DeleteUser", Access::Service)
        .allow_all(
            &["CompareUsers", "ListUnseenUsers", "FinishReconcile"],
            Access::ServiceNamed(token_auth::GATEWAY_SUBJECT),
        )
        .writes(&["StoreUser"])
}

/// Most commands in one `UpsertUsers` call.
pub const MAX_UPSERTS_PER_CALL: usize = 100;

/// The service implementation.
#[derive(Clone)]
pub struct IdentityApi {
    pool: Pool,
    /// The reads' pool: the replica's while it keeps up, else the primary's.
    reads: ReadPool,
    /// Each caller's last write here (only while a replica is configured).
    own_writes: OwnWrites,
    ledger: delivery_ledger::Ledger,
    metrics: Metrics,
    upserts: UpsertBatcher,
    lookups: UserLookups,
}

impl IdentityApi {
    /// Creates the handler set: webhook upserts are group-committed over `commit_slots`
    /// concurrent statements, lookups by id coalesced over `lookup_slots` concurrent queries.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Pool,
        reads: ReadPool,
        own_writes: OwnWrites,
        ledger: delivery_ledger::Ledger,
        metrics: Metrics,
        commit_slots: usize,
        lookup_slots: usize,
        cache: crate::batch::UserCache,
    ) -> Self {
        let sizes = metrics.upsert_batch_size.clone();
        let upserts = UpsertBatcher::start(pool.clone(), commit_slots, move |n| {
            sizes.observe(n as f64);
        });
        let sizes = metrics.lookup_batch_size.clone();
        let lookups = UserLookups::start(reads.clone(), lookup_slots, cache, move |n| {
            sizes.observe(n as f64);
        });
        Self {
            pool,
            reads,
            own_writes,
            ledger,
            metrics,
            upserts,
            lookups,
        }
    }
}

impl IdentityApi {
    /// The position the reads of `req`'s caller must see: its last write here, if lately.
    fn seen<T>(&self, req: &Request<T>) -> Result<Option<Lsn>, Status> {
        let remembered = if self.reads.has_replica() {
            subject(req).and_then(|s| self.own_writes.after(&s))
        } else {
            None
        };
        service_runtime::read_after::read_after(req, remembered)
    }

    /// Whose write `req` is, while a replica is configured (else nothing is remembered).
    fn writer<T>(&self, req: &Request<T>) -> Option<String> {
        if self.reads.has_replica() {
            subject(req)
        } else {
            None
        }
    }

    /// Remembers where the write of `who` committed, so its next reads here see it (only while
    /// a replica is configured: otherwise every read is the primary's).
    async fn wrote<T>(
        &self,
        who: Option<String>,
        answer: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        let mut answer = answer;
        if let (Some(who), Ok(r)) = (who, &mut answer) {
            let lsn = match self.pool.get().await {
                Ok(mut conn) => service_runtime::replica::commit_lsn(&mut conn).await.ok(),
                Err(_) => None,
            };
            if let Some(lsn) = &lsn {
                service_runtime::read_after::tell(r, lsn);
            }
            // Unknown: the caller's reads wait the bounded wait, then go to the primary.
            self.own_writes
                .record(&who, lsn.unwrap_or_else(Lsn::unknown));
        }
        answer
    }
}

/// Whose writes a caller's reads must see: `user:<id>` or `service:<subject>`.
fn subject<T>(req: &Request<T>) -> Option<String> {
    match req.extensions().get::<Principal>()? {
        Principal::User(u) => Some(format!("user:{}", u.user_id)),
        Principal::Service(s) => Some(format!("service:{}", s.name)),
    }
}

fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no verified caller"))
}

fn ts(dt: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    vbase_proto::timestamp_from_millis(dt.timestamp_millis())
}

/// The full record, or the public profile (no email) for other users.
fn to_proto(u: &UserRecord, full: bool) -> pb::User {
    pb::User {
        clerk_id: u.clerk_id.clone(),
        name: u.name.clone(),
        email: if full { u.email.clone() } else { String::new() },
        image_url: u.image_url.clone(),
        created_at: Some(ts(u.created_at)),
        updated_at: Some(ts(u.data_time())),
    }
}

fn sees_everything(p: &Principal, clerk_id: &str) -> bool {
    match p {
        Principal::Service(_) => true,
        Principal::User(u) => u.user_id == clerk_id,
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn store_user(
        &self,
        req: Request<pb::StoreUserRequest>,
    ) -> Result<Response<pb::StoreUserResponse>, Status> {
        let who = self.writer(&req);
        self.wrote(who, client::store_user(self, req).await).await
    }

    async fn get_current_user(
        &self,
        req: Request<pb::GetCurrentUserRequest>,
    ) -> Result<Response<pb::GetCurrentUserResponse>, Status> {
        client::get_current_user(self, req).await
    }

    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        client::get_user(self, req).await
    }

    async fn batch_get_users(
        &self,
        req: Request<pb::BatchGetUsersRequest>,
    ) -> Result<Response<pb::BatchGetUsersResponse>, Status> {
        client::batch_get_users(self, req).await
    }

    async fn upsert_user(
        &self,
        req: Request<pb::UpsertUserCommand>,
    ) -> Result<Response<pb::UpsertUserResponse>, Status> {
        let who = self.writer(&req);
        self.wrote(who, sync::upsert_user(self, req).await).await
    }

    async fn upsert_users(
        &self,
        req: Request<pb::UpsertUsersCommand>,
    ) -> Result<Response<pb::UpsertUsersResponse>, Status> {
        let who = self.writer(&req);
        self.wrote(who, sync::upsert_users(self, req).await).await
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserCommand>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let who = self.writer(&req);
        self.wrote(who, sync::delete_user(self, req).await).await
    }

    async fn compare_users(
        &self,
        req: Request<pb::CompareUsersRequest>,
    ) -> Result<Response<pb::CompareUsersResponse>, Status> {
        reconciling::compare_users(self, req).await
    }

    async fn list_unseen_users(
        &self,
        req: Request<pb::ListUnseenRequest>,
    ) -> Result<Response<pb::ListUnseenResponse>, Status> {
        reconciling::list_unseen_users(self, req).await
    }

    async fn finish_reconcile(
        &self,
        req: Request<pb::FinishReconcileRequest>,
    ) -> Result<Response<pb::FinishReconcileResponse>, Status> {
        reconciling::finish_reconcile(self, req).await
    }
}
