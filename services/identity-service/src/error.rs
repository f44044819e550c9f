//! identity-service's errors: the runtime's one mapping of domain errors to gRPC statuses.

pub use service_runtime::Error;
