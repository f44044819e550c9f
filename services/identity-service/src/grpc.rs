//! `vbase.identity.v1.IdentityService`: validates input, calls the domain, maps the result.

use crate::batch::{UpsertBatcher, UserLookups};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::reconcile;
use crate::users::{self, Outcome, UserRecord};
use input_validation as validate;
use service_runtime::Pool;
use std::collections::HashMap;
use token_auth::{Access, MethodPolicy, Principal};
use tonic::{Request, Response, Status};
use vbase_proto::identity::v1 as pb;
use vbase_proto::identity::v1::identity_service_server::IdentityService;
use vbase_proto::ops::v1 as ops;

/// Most ids one BatchGetUsers call may ask for.
pub const MAX_BATCH: usize = 500;

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
            &[
                "CompareUsers",
                "ListUnseenUsers",
                "FinishReconcile",
                "ListClerkInstances",
                "ConfirmClerkInstance",
                "QuarantineDelivery",
                "ListQuarantined",
                "ResolveQuarantined",
            ],
            Access::ServiceNamed(token_auth::GATEWAY_SUBJECT),
        )
        .writes(&["StoreUser"])
}

fn run_id(id: &str) -> Result<uuid::Uuid, Status> {
    Ok(validate::uuid("run_id", id)?)
}

fn comparison(c: reconcile::Comparison) -> i32 {
    match c {
        reconcile::Comparison::Missing => pb::Comparison::Missing,
        reconcile::Comparison::Older => pb::Comparison::Older,
        reconcile::Comparison::Same => pb::Comparison::Same,
        reconcile::Comparison::Newer => pb::Comparison::Newer,
    }
    .into()
}

/// Most commands in one `UpsertUsers` call.
pub const MAX_UPSERTS_PER_CALL: usize = 100;

/// The service implementation.
#[derive(Clone)]
pub struct IdentityApi {
    pool: Pool,
    ledger: delivery_ledger::Ledger,
    metrics: Metrics,
    upserts: UpsertBatcher,
    lookups: UserLookups,
}

impl IdentityApi {
    /// Creates the handler set: webhook upserts are group-committed over `commit_slots`
    /// concurrent statements, lookups by id coalesced over `lookup_slots` concurrent queries.
    pub fn new(
        pool: Pool,
        ledger: delivery_ledger::Ledger,
        metrics: Metrics,
        commit_slots: usize,
        lookup_slots: usize,
    ) -> Self {
        let sizes = metrics.upsert_batch_size.clone();
        let upserts = UpsertBatcher::start(pool.clone(), commit_slots, move |n| {
            sizes.observe(n as f64);
        });
        let sizes = metrics.lookup_batch_size.clone();
        let lookups = UserLookups::start(pool.clone(), lookup_slots, move |n| {
            sizes.observe(n as f64);
        });
        Self {
            pool,
            ledger,
            metrics,
            upserts,
            lookups,
        }
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
fn to_proto(u: UserRecord, full: bool) -> pb::User {
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

fn outcome(o: Outcome) -> (pb::CommandOutcome, &'static str) {
    match o {
        Outcome::Applied => (pb::CommandOutcome::Applied, "applied"),
        Outcome::Duplicate => (pb::CommandOutcome::Duplicate, "duplicate"),
        Outcome::Stale => (pb::CommandOutcome::Stale, "stale"),
    }
}

impl IdentityApi {
    /// Validates and applies one webhook upsert (through the group commit).
    async fn upsert_one(&self, c: &pb::UpsertUserCommand) -> Result<pb::CommandOutcome, Status> {
        let cmd = (|| {
            validate::event_id(&c.event_id)?;
            let occurred_at = validate::occurred_at(c.occurred_at.as_ref())?;
            validate::user_id("clerk_id", &c.clerk_id)?;
            validate::text("name", &c.name, validate::MAX_NAME_LEN)?;
            validate::email(&c.email)?;
            validate::url("image_url", &c.image_url)?;
            Ok::<_, Error>(users::UpsertUser {
                event_id: c.event_id.clone(),
                occurred_at,
                clerk_id: c.clerk_id.clone(),
                name: c.name.trim().to_owned(),
                email: c.email.clone(),
                image_url: c.image_url.clone(),
                created_at: validate::optional_time(c.created_at.as_ref()),
                event_time: validate::optional_time(c.event_time.as_ref()),
            })
        })();
        let result = match cmd {
            Ok(cmd) => match self.ledger.note_instance(&c.instance_id).await {
                Ok(()) => self.upserts.upsert(cmd).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.record("upsert_user", result)
    }

    fn record(
        &self,
        command: &'static str,
        r: Result<Outcome, Error>,
    ) -> Result<pb::CommandOutcome, Status> {
        match r {
            Ok(o) => {
                let (proto, label) = outcome(o);
                self.metrics.command(command, label);
                Ok(proto)
            }
            Err(e) => {
                self.metrics.command(
                    command,
                    if matches!(e, Error::Invalid(_)) {
                        "invalid"
                    } else {
                        "error"
                    },
                );
                Err(e.into())
            }
        }
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn store_user(
        &self,
        req: Request<pb::StoreUserRequest>,
    ) -> Result<Response<pb::StoreUserResponse>, Status> {
        let p = principal(&req)?;
        let user = p
            .as_user()
            .ok_or_else(|| Status::permission_denied("StoreUser is for user tokens"))?;
        validate::user_id("token sub", &user.user_id)?;
        let name = user
            .name
            .clone()
            .filter(|n| validate::text("name", n, validate::MAX_NAME_LEN).is_ok());
        let email = user.email.clone().filter(|e| validate::email(e).is_ok());
        let issued_at =
            chrono::DateTime::from_timestamp(user.issued_at, 0).unwrap_or_else(chrono::Utc::now);
        let (record, created) = users::store_user(
            &self.pool,
            users::TokenClaims {
                clerk_id: user.user_id.clone(),
                name,
                email,
                issued_at,
            },
        )
        .await?;
        Ok(Response::new(pb::StoreUserResponse {
            user: Some(to_proto(record, true)),
            created,
        }))
    }

    async fn get_current_user(
        &self,
        req: Request<pb::GetCurrentUserRequest>,
    ) -> Result<Response<pb::GetCurrentUserResponse>, Status> {
        let p = principal(&req)?;
        let user = p
            .as_user()
            .ok_or_else(|| Status::permission_denied("GetCurrentUser is for user tokens"))?;
        let record = self.lookups.get(&user.user_id).await?.ok_or_else(|| {
            Status::not_found("user not synced yet: call StoreUser or wait for the Clerk webhook")
        })?;
        Ok(Response::new(pb::GetCurrentUserResponse {
            user: Some(to_proto(record, true)),
        }))
    }

    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let p = principal(&req)?;
        let id = req.into_inner().clerk_id;
        validate::user_id("clerk_id", &id)?;
        let record = self
            .lookups
            .get(&id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no user {id}")))?;
        let full = sees_everything(&p, &id);
        Ok(Response::new(pb::GetUserResponse {
            user: Some(to_proto(record, full)),
        }))
    }

    async fn batch_get_users(
        &self,
        req: Request<pb::BatchGetUsersRequest>,
    ) -> Result<Response<pb::BatchGetUsersResponse>, Status> {
        let p = principal(&req)?;
        let ids = req.into_inner().clerk_ids;
        if ids.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BATCH} clerk_ids per call, got {}",
                ids.len()
            )));
        }
        for id in &ids {
            validate::user_id("clerk_ids[]", id)?;
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        let found: HashMap<String, UserRecord> = users::get_users(&self.pool, &unique)
            .await?
            .into_iter()
            .map(|u| (u.clerk_id.clone(), u))
            .collect();
        let mut users_out = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            match found.get(&id) {
                Some(u) => users_out.push(to_proto(u.clone(), sees_everything(&p, &id))),
                None if !missing.contains(&id) => missing.push(id),
                None => {}
            }
        }
        Ok(Response::new(pb::BatchGetUsersResponse {
            users: users_out,
            missing_clerk_ids: missing,
        }))
    }

    async fn upsert_user(
        &self,
        req: Request<pb::UpsertUserCommand>,
    ) -> Result<Response<pb::UpsertUserResponse>, Status> {
        let outcome = self.upsert_one(&req.into_inner()).await?;
        Ok(Response::new(pb::UpsertUserResponse {
            outcome: outcome.into(),
        }))
    }

    async fn upsert_users(
        &self,
        req: Request<pb::UpsertUsersCommand>,
    ) -> Result<Response<pb::UpsertUsersResponse>, Status> {
        let commands = req.into_inner().commands;
        if commands.len() > MAX_UPSERTS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_UPSERTS_PER_CALL} commands per UpsertUsers call, got {}",
                commands.len()
            )));
        }
        // Concurrently, so they meet in the group commit as one batch.
        let results = futures::future::join_all(commands.iter().map(|c| async move {
            match self.upsert_one(c).await {
                Ok(outcome) => pb::UpsertResult {
                    outcome: outcome.into(),
                    code: 0,
                    message: String::new(),
                },
                Err(status) => pb::UpsertResult {
                    outcome: pb::CommandOutcome::Unspecified.into(),
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                },
            }
        }))
        .await;
        Ok(Response::new(pb::UpsertUsersResponse { results }))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserCommand>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let c = req.into_inner();
        let cmd = (|| {
            validate::event_id(&c.event_id)?;
            let occurred_at = validate::optional_time(c.occurred_at.as_ref());
            validate::user_id("clerk_id", &c.clerk_id)?;
            Ok::<_, Error>(users::DeleteUser {
                event_id: c.event_id.clone(),
                occurred_at,
                clerk_id: c.clerk_id.clone(),
            })
        })();
        let result = match cmd {
            Ok(cmd) => match self.ledger.note_instance(&c.instance_id).await {
                Ok(()) => users::delete_user(&self.pool, cmd).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let outcome = self.record("delete_user", result)?;
        Ok(Response::new(pb::DeleteUserResponse {
            outcome: outcome.into(),
        }))
    }

    async fn compare_users(
        &self,
        req: Request<pb::CompareUsersRequest>,
    ) -> Result<Response<pb::CompareUsersResponse>, Status> {
        let m = req.into_inner();
        let run = run_id(&m.run_id)?;
        if m.users.len() > reconcile::MAX_PAGE {
            return Err(Status::invalid_argument(format!(
                "at most {} users per CompareUsers call, got {}",
                reconcile::MAX_PAGE,
                m.users.len()
            )));
        }
        if !m.scope_id.is_empty() {
            validate::user_id("scope_id", &m.scope_id)?;
        }
        let users = m
            .users
            .into_iter()
            .map(|u| {
                validate::user_id("users[].clerk_id", &u.clerk_id)?;
                Ok(reconcile::Listed {
                    updated_at: validate::occurred_at(u.occurred_at.as_ref())?,
                    clerk_id: u.clerk_id,
                    name: u.name.trim().to_owned(),
                    email: u.email,
                    image_url: u.image_url,
                })
            })
            .collect::<Result<Vec<_>, validate::Invalid>>()?;
        let range = m.range.unwrap_or_default();
        let position = |t: Option<&prost_types::Timestamp>, id: String| {
            validate::optional_time(t).map(|t| (t, id))
        };
        let page = reconcile::Page {
            run,
            started_at: validate::occurred_at(m.started_at.as_ref())
                .map_err(|_| Status::invalid_argument("started_at is required"))?,
            users,
            after: position(range.after_created_at.as_ref(), range.after_id),
            through: position(range.through_created_at.as_ref(), range.through_id),
            scope: m.scope_id,
        };
        let results = reconcile::compare(&self.pool, &page).await?;
        Ok(Response::new(pb::CompareUsersResponse {
            results: results.into_iter().map(comparison).collect(),
        }))
    }

    async fn list_unseen_users(
        &self,
        req: Request<pb::ListUnseenRequest>,
    ) -> Result<Response<pb::ListUnseenResponse>, Status> {
        let m = req.into_inner();
        let q = reconcile::Unseen {
            run: run_id(&m.run_id)?,
            after: m.after,
            limit: validate::page_size(m.limit, 500, reconcile::MAX_PAGE as i64)?,
        };
        let ids = reconcile::unseen(&self.pool, &q).await?;
        let (candidates, held) = if q.after.is_empty() {
            reconcile::counts(&self.pool, q.run).await?
        } else {
            (0, 0)
        };
        Ok(Response::new(pb::ListUnseenResponse {
            ids,
            candidates,
            held,
        }))
    }

    async fn list_clerk_instances(
        &self,
        _req: Request<ops::ListClerkInstancesRequest>,
    ) -> Result<Response<ops::ListClerkInstancesResponse>, Status> {
        self.ledger.clerk_instances().await.map(Response::new)
    }

    async fn confirm_clerk_instance(
        &self,
        req: Request<ops::ConfirmClerkInstanceRequest>,
    ) -> Result<Response<ops::ConfirmClerkInstanceResponse>, Status> {
        self.ledger
            .confirm_clerk_instance(req.into_inner())
            .await
            .map(Response::new)
    }

    async fn finish_reconcile(
        &self,
        req: Request<pb::FinishReconcileRequest>,
    ) -> Result<Response<pb::FinishReconcileResponse>, Status> {
        let m = req.into_inner();
        let run = run_id(&m.run_id)?;
        reconcile::finish(&self.pool, run).await?;
        self.ledger.record_run(m.run.as_ref()).await?;
        Ok(Response::new(pb::FinishReconcileResponse {}))
    }

    async fn quarantine_delivery(
        &self,
        req: Request<ops::QuarantineDeliveryRequest>,
    ) -> Result<Response<ops::QuarantineDeliveryResponse>, Status> {
        self.ledger
            .quarantine(req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_quarantined(
        &self,
        req: Request<ops::ListQuarantinedRequest>,
    ) -> Result<Response<ops::ListQuarantinedResponse>, Status> {
        self.ledger
            .list(req.into_inner(), true)
            .await
            .map(Response::new)
    }

    async fn resolve_quarantined(
        &self,
        req: Request<ops::ResolveQuarantinedRequest>,
    ) -> Result<Response<ops::ResolveQuarantinedResponse>, Status> {
        self.ledger
            .resolve(req.into_inner())
            .await
            .map(Response::new)
    }
}
