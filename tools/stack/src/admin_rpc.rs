//! Every call this tool makes to the services' admin RPCs, and the grpcurl commands it prints
//! for them: the one place that names their method paths.
//!
//! Called: `WorkspaceAdminService/ListJobs` (the story waits for the purge), and in printed
//! commands `vbase.ops.v1.DeliveryAdminService/ListQuarantined` (each service serves the ledger).

use anyhow::Result;
use tonic::transport::Channel;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_admin_service_client::WorkspaceAdminServiceClient;

/// The ledger's operator service, which identity-service and workspace-service both serve.
pub const DELIVERY_ADMIN_SERVICE: &str = "vbase.ops.v1.DeliveryAdminService";

/// The full method name of the quarantine listing a service's ledger answers.
pub fn list_quarantined_method() -> String {
    format!("{DELIVERY_ADMIN_SERVICE}/ListQuarantined")
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
