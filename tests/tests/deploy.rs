//! The deployment files against the code. No Docker engine and no cluster
//! run where these tests do, so nothing else would notice when the
//! Dockerfile, compose.yaml or the Kubernetes manifests (deploy/k8s) drift
//! from the binaries; these tests read them and check every name in them
//! against what the code has:
//!
//! - [`image`]: the Dockerfile builds the workspace's packages and copies
//!   exactly their binaries, runs as a numeric non-root user, and points
//!   `SAGAFLOW_CONSOLE_DIR` at the console it copies;
//! - [`compose`] and [`k8s`] (both overlays, rendered with
//!   `kubectl kustomize`): every container runs a real binary and
//!   subcommand, sets only variables that binary reads, listens where its
//!   probes and health checks look, on paths the binaries serve; every
//!   certificate path leads to a file `tests/compose/make-certs.sh` makes,
//!   whose names match the hosts that call it;
//! - [`migrations`]: replicas starting at once on one database each apply
//!   every migration once.
//!
//! [`code`] is what the code says: the binaries, their variables, the
//! paths they serve, the shutdown bound.

#[path = "deploy/code.rs"]
mod code;
#[path = "deploy/compose.rs"]
mod compose;
#[path = "deploy/image.rs"]
mod image;
#[path = "deploy/k8s.rs"]
mod k8s;
#[path = "deploy/migrations.rs"]
mod migrations;

use std::path::PathBuf;

use serde::Deserialize as _;
use serde_json::Value;

/// The repository's top directory.
fn root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Every document of a YAML stream, `<<` merge keys applied, as JSON values
/// (every key in these files is a string).
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| {
            let mut value = serde_yaml_ng::Value::deserialize(document).expect("valid YAML");
            value.apply_merge().expect("valid merge keys");
            serde_json::to_value(value).expect("YAML with string keys")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `v` at a JSON pointer, as a string (numbers written out), if there.
fn text_at(v: &Value, pointer: &str) -> Option<String> {
    match v.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
