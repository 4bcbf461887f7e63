//! The saga types this orchestrator runs. Each is plain data; the engine in
//! [`crate::saga`] needs no change for a new one.

pub mod order;

use crate::saga::Definition;

/// Every definition this build knows, at every version still in use.
/// Instances keep the version they started with.
pub fn registry() -> Vec<Definition> {
    vec![order::definition()]
}

/// The definition for a saga type at a version.
pub fn find(saga_type: &str, version: u32) -> Option<Definition> {
    registry()
        .into_iter()
        .find(|d| d.saga_type == saga_type && d.version == version)
}
