//! `vbase.identity.v1.IdentityAdminService`: the operator's view (sync status, quarantine).

use token_auth::{Access, MethodPolicy};
use tonic::{Request, Response, Status};
use vbase_proto::identity::v1::identity_admin_service_server::IdentityAdminService;
use vbase_proto::ops::v1 as ops;

/// Fully-qualified name of the admin service.
pub const ADMIN_SERVICE_NAME: &str = "vbase.identity.v1.IdentityAdminService";

/// Operators only, every method.
pub fn policy() -> MethodPolicy {
    MethodPolicy::new(ADMIN_SERVICE_NAME).allow_all(
        &[
            "GetSyncStatus",
            "ListQuarantined",
            "GetQuarantined",
            "DiscardQuarantined",
            "ListReconcileRuns",
        ],
        Access::Operator,
    )
}

/// The admin handlers.
#[derive(Clone)]
pub struct IdentityAdmin {
    pub ledger: delivery_ledger::Ledger,
}

#[tonic::async_trait]
impl IdentityAdminService for IdentityAdmin {
    async fn get_sync_status(
        &self,
        _req: Request<ops::GetSyncStatusRequest>,
    ) -> Result<Response<ops::GetSyncStatusResponse>, Status> {
        self.ledger.status().await.map(Response::new)
    }

    async fn list_quarantined(
        &self,
        req: Request<ops::ListQuarantinedRequest>,
    ) -> Result<Response<ops::ListQuarantinedResponse>, Status> {
        self.ledger
            .list(req.into_inner(), false)
            .await
            .map(Response::new)
    }

    async fn get_quarantined(
        &self,
        req: Request<ops::GetQuarantinedRequest>,
    ) -> Result<Response<ops::QuarantinedDelivery>, Status> {
        self.ledger.get(req.into_inner()).await.map(Response::new)
    }

    async fn discard_quarantined(
        &self,
        req: Request<ops::DiscardQuarantinedRequest>,
    ) -> Result<Response<ops::DiscardQuarantinedResponse>, Status> {
        self.ledger
            .discard(req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_reconcile_runs(
        &self,
        req: Request<ops::ListReconcileRunsRequest>,
    ) -> Result<Response<ops::ListReconcileRunsResponse>, Status> {
        self.ledger.runs(req.into_inner()).await.map(Response::new)
    }
}
