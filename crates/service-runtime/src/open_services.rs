//! Health and reflection: the services any pod the NetworkPolicy admits may call without a
//! token. Health answers `Check` only, one small message per call (`Watch` streams would stay
//! open, one per call, counted by nothing; Kubernetes' gRPC probes and our tools call `Check`).
//! Reflection streams an answer per request for as long as the client keeps its request open,
//! so besides its message limits it runs within a [`ReflectionLimit`]: calls at once per
//! replica, and a deadline per call.

use crate::reflection_limit::ReflectionLimit;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// Largest health request or answer: a service name (under 100 bytes) with room to spare.
pub const HEALTH_MAX_MESSAGE: usize = 1024;
/// Largest reflection request: a host and a symbol or file name, each well under 1 KiB.
pub const REFLECTION_MAX_REQUEST: usize = 4 * 1024;
/// Largest reflection answer: every file of our descriptor set together (with comments, about
/// 60 KiB) fits several times; the request's host is echoed in it, within its own limit.
pub const REFLECTION_MAX_ANSWER: usize = 1024 * 1024;

/// `grpc.health.v1.Health` with `Check` only: `Watch` answers UNIMPLEMENTED, which gRPC's
/// client-side health checking reads as "no health checking here".
#[derive(Debug)]
struct CheckOnly(HealthService);

#[tonic::async_trait]
impl Health for CheckOnly {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.check(request).await
    }

    type WatchStream = futures::stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented(
            "health Watch is not served: call Check",
        ))
    }
}

/// The health service of `reporter`'s statuses, within [`HEALTH_MAX_MESSAGE`].
pub fn health(reporter: &HealthReporter) -> HealthServer<impl Health> {
    HealthServer::new(CheckOnly(HealthService::from_health_reporter(
        reporter.clone(),
    )))
    .max_decoding_message_size(HEALTH_MAX_MESSAGE)
    .max_encoding_message_size(HEALTH_MAX_MESSAGE)
}

fn reflection_builder(names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    names.iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vbase_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health"),
        |b, name| b.with_service_name(*name),
    )
}

/// Adds health, and reflection (v1 and v1alpha) describing `names` and health, to `routes`,
/// each within its message limits; both reflection versions share `reflection`'s calls.
pub fn add(
    routes: &mut tonic::service::RoutesBuilder,
    reporter: &HealthReporter,
    names: &[&'static str],
    reflection: &ReflectionLimit,
) -> anyhow::Result<()> {
    use tower::Layer;
    routes
        .add_service(health(reporter))
        .add_service(
            reflection.layer(
                reflection_builder(names)
                    .build_v1()?
                    .max_decoding_message_size(REFLECTION_MAX_REQUEST)
                    .max_encoding_message_size(REFLECTION_MAX_ANSWER),
            ),
        )
        .add_service(
            reflection.layer(
                reflection_builder(names)
                    .build_v1alpha()?
                    .max_decoding_message_size(REFLECTION_MAX_REQUEST)
                    .max_encoding_message_size(REFLECTION_MAX_ANSWER),
            ),
        );
    Ok(())
}
