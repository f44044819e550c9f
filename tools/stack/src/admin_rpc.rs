//! Every call this tool makes to the services' admin RPCs, and the grpcurl commands it prints
//! for them: the one place that names their method paths.
//!
//! Called: `WorkspaceAdminService/ListJobs` (the story waits for the purge), and in printed
//! commands `{Identity,Workspace}AdminService/ListQuarantined`.

use anyhow::Result;
use tonic::transport::Channel;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_admin_service_client::WorkspaceAdminServiceClient;

/// The admin service of `service` (`identity-service` or `workspace-service`).
pub fn admin_service(service: &str) -> &'static str {
    if service == "identity-service" {
        "vbase.identity.v1.IdentityAdminService"
    } else {
        "vbase.workspace.v1.WorkspaceAdminService"
    }
}

/// The full method name of the quarantine listing of `service`'s admin service.
pub fn list_quarantined_method(service: &str) -> String {
    format!("{}/ListQuarantined", admin_service(service))
}

/// Purge jobs not yet done whose key is `key` (a workspace id), through
/// `WorkspaceAdminService/ListJobs` with an operator's token.
pub async fn purge_jobs_for(channel: Channel, operator_token: &str, key: &str) -> Result<usize> {
    let mut admin = WorkspaceAdminServiceClient::new(channel);
    let jobs = admin
        .list_jobs(crate::grpc::bearer(
            wsp::ListJobsRequest {
                queue: wsp::JobQueue::Purge.into(),
                state: wsp::JobState::Unspecified.into(),
                page_size: 500,
                page_token: String::new(),
            },
            operator_token,
        ))
        .await?
        .into_inner()
        .jobs;
    Ok(jobs.iter().filter(|j| j.key == key).count())
}
