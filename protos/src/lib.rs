//! Sagaflow's wire contracts, generated from `proto/` at build time.
//!
//! Layout:
//! - [`events::v1`]: the event envelope carried through Pub/Sub.
//! - [`participant::v1`]: participant services and the shared `StepCommand`.
//! - [`orchestrator::v1`]: the public `SagaService` API.

pub mod events {
    pub mod v1 {
        tonic::include_proto!("sagaflow.events.v1");
    }
}

pub mod participant {
    pub mod v1 {
        tonic::include_proto!("sagaflow.participant.v1");
    }
}

pub mod orchestrator {
    pub mod v1 {
        tonic::include_proto!("sagaflow.orchestrator.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Sagaflow proto (for gRPC reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sagaflow_descriptor");
