//! gRPC server reflection (v1), so `grpcurl` and other tools can list and
//! describe a binary's services without the `.proto` files.

use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

/// The name reflection itself is served under.
pub const SERVICE: &str = "grpc.reflection.v1.ServerReflection";

/// The name gRPC health is served under.
pub const HEALTH: &str = "grpc.health.v1.Health";

/// A reflection service that lists `services` (fully qualified names; add
/// [`HEALTH`] and [`SERVICE`] when served) and describes them from
/// Sagaflow's protos and gRPC health's.
pub fn service(services: &[&str]) -> anyhow::Result<ServerReflectionServer<impl ServerReflection>> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sagaflow_protos::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for name in services {
        builder = builder.with_service_name(*name);
    }
    builder
        .build_v1()
        .map_err(|e| anyhow::anyhow!("building gRPC reflection: {e}"))
}
