//! The ledger's two gRPC services, `vbase.ops.v1.DeliveryIntakeService` (the webhook
//! gateway's) and `vbase.ops.v1.DeliveryAdminService` (the operators'), served by both
//! services over their own [`Ledger`]. What differs between the two callers is who may call
//! (each service's [`MethodPolicy`]) and whether quarantined bodies are listed.

use crate::Ledger;
use service_runtime::GrpcServices;
use token_auth::{Access, MethodPolicy};
use tonic::{Request, Response, Status};
use vbase_proto::ops::v1 as pb;
use vbase_proto::ops::v1::delivery_admin_service_server::{
    DeliveryAdminService, DeliveryAdminServiceServer,
};
use vbase_proto::ops::v1::delivery_intake_service_server::{
    DeliveryIntakeService, DeliveryIntakeServiceServer,
};

/// Fully-qualified name of the gateway's service.
pub const INTAKE_SERVICE_NAME: &str = "vbase.ops.v1.DeliveryIntakeService";
/// Fully-qualified name of the operators' service.
pub const ADMIN_SERVICE_NAME: &str = "vbase.ops.v1.DeliveryAdminService";

/// The largest request `DeliveryIntakeService` decodes: a `QuarantineDelivery` with a webhook
/// body of [`crate::quarantine::MAX_BODY`] (1 MiB) and its id, type and reason (at most
/// [`crate::quarantine::MAX_REASON`] characters), with room to spare.
pub const INTAKE_MAX_REQUEST: usize = crate::quarantine::MAX_BODY + 64 * 1024;
/// The largest request `DeliveryAdminService` decodes: ids, a page token and a discard reason
/// (at most 500 characters).
pub const ADMIN_MAX_REQUEST: usize = 16 * 1024;

/// The webhook gateway's service token only, every method.
pub fn intake_policy() -> MethodPolicy {
    MethodPolicy::new(INTAKE_SERVICE_NAME).allow_all(
        &[
            "QuarantineDelivery",
            "ListQuarantined",
            "ResolveQuarantined",
            "ListClerkInstances",
            "ConfirmClerkInstance",
        ],
        Access::ServiceNamed(token_auth::GATEWAY_SUBJECT),
    )
}

/// Operators only, every method.
pub fn admin_policy() -> MethodPolicy {
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

impl Ledger {
    /// `services` with both ledger services added, each with its policy.
    pub fn mount(&self, services: GrpcServices) -> GrpcServices {
        services
            .add(
                DeliveryIntakeServiceServer::new(Intake(self.clone()))
                    .max_decoding_message_size(INTAKE_MAX_REQUEST),
                intake_policy(),
            )
            .add(
                DeliveryAdminServiceServer::new(Admin(self.clone()))
                    .max_decoding_message_size(ADMIN_MAX_REQUEST),
                admin_policy(),
            )
    }
}

/// The gateway's methods.
#[derive(Clone)]
struct Intake(Ledger);

#[tonic::async_trait]
impl DeliveryIntakeService for Intake {
    async fn quarantine_delivery(
        &self,
        req: Request<pb::QuarantineDeliveryRequest>,
    ) -> Result<Response<pb::QuarantineDeliveryResponse>, Status> {
        self.0.quarantine(req.into_inner()).await.map(Response::new)
    }

    async fn list_quarantined(
        &self,
        req: Request<pb::ListQuarantinedRequest>,
    ) -> Result<Response<pb::ListQuarantinedResponse>, Status> {
        self.0.list(req.into_inner(), true).await.map(Response::new)
    }

    async fn resolve_quarantined(
        &self,
        req: Request<pb::ResolveQuarantinedRequest>,
    ) -> Result<Response<pb::ResolveQuarantinedResponse>, Status> {
        self.0.resolve(req.into_inner()).await.map(Response::new)
    }

    async fn list_clerk_instances(
        &self,
        _req: Request<pb::ListClerkInstancesRequest>,
    ) -> Result<Response<pb::ListClerkInstancesResponse>, Status> {
        self.0.clerk_instances().await.map(Response::new)
    }

    async fn confirm_clerk_instance(
        &self,
        req: Request<pb::ConfirmClerkInstanceRequest>,
    ) -> Result<Response<pb::ConfirmClerkInstanceResponse>, Status> {
        self.0
            .confirm_clerk_instance(req.into_inner())
            .await
            .map(Response::new)
    }
}

/// The operators' methods: quarantined bodies only one at a time (`GetQuarantined`).
#[derive(Clone)]
struct Admin(Ledger);

#[tonic::async_trait]
impl DeliveryAdminService for Admin {
    async fn get_sync_status(
        &self,
        _req: Request<pb::GetSyncStatusRequest>,
    ) -> Result<Response<pb::GetSyncStatusResponse>, Status> {
        self.0.status().await.map(Response::new)
    }

    async fn list_quarantined(
        &self,
        req: Request<pb::ListQuarantinedRequest>,
    ) -> Result<Response<pb::ListQuarantinedResponse>, Status> {
        self.0
            .list(req.into_inner(), false)
            .await
            .map(Response::new)
    }

    async fn get_quarantined(
        &self,
        req: Request<pb::GetQuarantinedRequest>,
    ) -> Result<Response<pb::QuarantinedDelivery>, Status> {
        self.0.get(req.into_inner()).await.map(Response::new)
    }

    async fn discard_quarantined(
        &self,
        req: Request<pb::DiscardQuarantinedRequest>,
    ) -> Result<Response<pb::DiscardQuarantinedResponse>, Status> {
        self.0.discard(req.into_inner()).await.map(Response::new)
    }

    async fn list_reconcile_runs(
        &self,
        req: Request<pb::ListReconcileRunsRequest>,
    ) -> Result<Response<pb::ListReconcileRunsResponse>, Status> {
        self.0.runs(req.into_inner()).await.map(Response::new)
    }
}
