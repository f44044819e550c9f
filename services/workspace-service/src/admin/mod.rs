//! `vbase.workspace.v1.WorkspaceAdminService`: the operator's view of the job queues, beside
//! the public `WorkspaceService` (sync status and quarantine are `delivery-ledger`'s).

mod jobs;

use crate::workers::Wakes;
use job_queue::JobState;
use service_runtime::Pool;
use token_auth::{Access, MethodPolicy};
use tonic::{Request, Response, Status};
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::workspace_admin_service_server::WorkspaceAdminService;

/// Fully-qualified name of the admin service.
pub const ADMIN_SERVICE_NAME: &str = "vbase.workspace.v1.WorkspaceAdminService";

/// The largest request `WorkspaceAdminService` decodes: a queue, a state, a page token and job
/// keys.
pub const ADMIN_MAX_REQUEST: usize = 16 * 1024;

/// Operators only, every method.
pub fn policy() -> MethodPolicy {
    MethodPolicy::new(ADMIN_SERVICE_NAME).allow_all(
        &["ListJobs", "RetryJobs", "GetQueueDepths"],
        Access::Operator,
    )
}

/// The admin handlers.
#[derive(Clone)]
pub struct WorkspaceAdmin {
    pub pool: Pool,
    /// Woken after a retry, so the workers take the jobs at once.
    pub wakes: Wakes,
}

fn db(e: diesel::result::Error) -> Status {
    service_runtime::db::status_for(&e)
}

impl WorkspaceAdmin {
    async fn conn(
        &self,
    ) -> Result<
        diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncPgConnection>,
        Status,
    > {
        self.pool
            .get()
            .await
            .map_err(|e| service_runtime::db::pool_status(&e))
    }
}

#[tonic::async_trait]
impl WorkspaceAdminService for WorkspaceAdmin {
    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = req.into_inner();
        let (queue, table) = jobs::table(r.queue)?;
        let state = jobs::state_filter(r.state)?;
        let limit = input_validation::page_size(r.page_size, 100, 500)?;
        if r.page_token.len() > 200 {
            return Err(Status::invalid_argument(
                "page_token is not one this service gave out; start again without it",
            ));
        }
        let mut conn = self.conn().await?;
        let mut found = jobs::list(&mut conn, queue, table, state, &r.page_token, limit + 1)
            .await
            .map_err(db)?;
        let more = found.len() as i64 > limit;
        found.truncate(limit as usize);
        let next_page_token = match (more, found.last()) {
            (true, Some(last)) => last.key.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: found,
            next_page_token,
        }))
    }

    async fn retry_jobs(
        &self,
        req: Request<pb::RetryJobsRequest>,
    ) -> Result<Response<pb::RetryJobsResponse>, Status> {
        let r = req.into_inner();
        let (queue, table) = jobs::table(r.queue)?;
        let mut conn = self.conn().await?;
        let retried = match r.which {
            Some(pb::retry_jobs_request::Which::Key(key)) => {
                let key = input_validation::required_text("key", &key, 200)?;
                job_queue::retry_key(&mut conn, table, &key)
                    .await
                    .map_err(db)?
            }
            Some(pb::retry_jobs_request::Which::State(s)) => match jobs::state_filter(s)? {
                Some(state @ (JobState::Dead | JobState::Failing)) => {
                    job_queue::retry_state(&mut conn, table, state)
                        .await
                        .map_err(db)?
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "state must be JOB_STATE_DEAD or JOB_STATE_FAILING",
                    ));
                }
            },
            None => {
                return Err(Status::invalid_argument(
                    "name the job (key) or the state of the jobs to retry (state)",
                ));
            }
        };
        let wake = match queue {
            pb::JobQueue::Purge => &self.wakes.purge,
            _ => &self.wakes.cleanup,
        };
        wake.notify_one();
        tracing::info!(
            queue = queue.as_str_name(),
            retried,
            "jobs retried by an operator"
        );
        Ok(Response::new(pb::RetryJobsResponse {
            retried: retried as i64,
        }))
    }

    async fn get_queue_depths(
        &self,
        _req: Request<pb::GetQueueDepthsRequest>,
    ) -> Result<Response<pb::GetQueueDepthsResponse>, Status> {
        let mut conn = self.conn().await?;
        let queues = jobs::depths(&mut conn).await.map_err(db)?;
        Ok(Response::new(pb::GetQueueDepthsResponse { queues }))
    }
}
