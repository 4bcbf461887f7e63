//! What the code says, for the deployment files to be checked against: the
//! service binaries with their arguments and variables, the cargo `[[bin]]`
//! targets, the HTTP paths the binaries serve, the shutdown bound, the
//! participants the orchestrator reaches and the saga definitions the code
//! ships, and the certificates `tests/compose/make-certs.sh` makes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sagaflow_common::config::{COMMON_VARS, Var};
use sagaflow_participants::Kind;

use super::root;

/// Readiness: `/readyz` answers 200 once the service can do its work.
pub const READY_PATH: &str = "/readyz";
/// Liveness: `/healthz` answers 200 while the process is not wedged.
pub const LIVE_PATH: &str = "/healthz";
/// Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";

/// On SIGTERM the orchestrator waits this long at most for the events in
/// hand to be acked; every binary is done well within it.
pub const SHUTDOWN_BOUND: Duration = sagaflow_common::pubsub::SHUTDOWN_GRACE;

/// One service binary as a container runs it.
#[derive(Debug)]
pub struct Binary {
    /// The binary's name, as installed in the image.
    pub name: String,
    /// Every variable this command reads; a name with `<KEY>` in it stands
    /// for a family (`SAGAFLOW_PARTICIPANT_<KEY>_URL`).
    pub vars: BTreeSet<&'static str>,
    /// The variable naming its HTTP address (health, readiness, metrics).
    pub http_var: String,
    /// The variable naming its gRPC address, when it serves gRPC.
    pub grpc_var: Option<String>,
}

impl Binary {
    /// Whether this command reads `var`: one of its names, or one of a
    /// family's (`<KEY>` standing for upper-case letters, digits and `_`).
    pub fn reads(&self, var: &str) -> bool {
        self.vars.iter().any(|name| match name.split_once("<KEY>") {
            None => *name == var,
            Some((prefix, suffix)) => var
                .strip_prefix(prefix)
                .and_then(|v| v.strip_suffix(suffix))
                .is_some_and(|key| {
                    !key.is_empty()
                        && key
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                }),
        })
    }
}

/// The service binary `command` runs, or why it is none: a binary with
/// arguments it does not take, or not a service at all.
pub fn binary(command: &[String]) -> Result<Binary, String> {
    let with = |name: &str, vars: &[Var], http_var: String, grpc_var: Option<String>| Binary {
        name: name.to_owned(),
        vars: COMMON_VARS.iter().chain(vars).map(|v| v.name).collect(),
        http_var,
        grpc_var,
    };
    let strs: Vec<&str> = command.iter().map(String::as_str).collect();
    match strs.as_slice() {
        ["sagaflow-orchestrator"] => Ok(with(
            "sagaflow-orchestrator",
            sagaflow_orchestrator::config::VARS,
            "SAGAFLOW_ORCHESTRATOR_HTTP_LISTEN".to_owned(),
            Some("SAGAFLOW_ORCHESTRATOR_LISTEN".to_owned()),
        )),
        ["sagaflow-participant", kind] => {
            let kind: Kind = kind.parse().map_err(|e| format!("{command:?}: {e:#}"))?;
            let upper = kind.name().to_uppercase();
            let vars = [
                sagaflow_participants::config::VARS,
                sagaflow_participant_kit::config::SHARED_VARS,
            ]
            .concat();
            let mut b = with(
                "sagaflow-participant",
                &vars,
                format!("SAGAFLOW_{upper}_HTTP_LISTEN"),
                Some(format!("SAGAFLOW_{upper}_LISTEN")),
            );
            // The list holds every participant's variables; one reads its own.
            let others: Vec<String> = Kind::ALL
                .iter()
                .filter(|k| **k != kind)
                .map(|k| format!("SAGAFLOW_{}_", k.name().to_uppercase()))
                .collect();
            b.vars
                .retain(|v| !others.iter().any(|prefix| v.starts_with(prefix)));
            Ok(b)
        }
        ["sagaflow-outbox-relay"] => Ok(with(
            "sagaflow-outbox-relay",
            outbox_relay::config::VARS,
            "SAGAFLOW_RELAY_HTTP_LISTEN".to_owned(),
            None,
        )),
        _ => Err(format!(
            "{command:?} is no service command (sagaflow-orchestrator, \
             sagaflow-participant order|payment|inventory|flight|hotel|car|trip, \
             sagaflow-outbox-relay)"
        )),
    }
}

/// The participants an orchestrator with environment `env` reaches, as
/// its configuration reads them: key → (the variable, the URL). A key's
/// variable is `SAGAFLOW_PARTICIPANT_<KEY>_URL`, or the alias the
/// orchestrator documents for it (`SAGAFLOW_ORDER_URL`). The orchestrator's
/// own fallbacks (127.0.0.1) are left out: no deployment runs a participant
/// in the orchestrator's container.
pub fn participant_urls(env: &BTreeMap<String, String>) -> BTreeMap<String, (String, String)> {
    let mut urls = BTreeMap::new();
    for (var, url) in env {
        let key = match var
            .strip_prefix("SAGAFLOW_PARTICIPANT_")
            .and_then(|k| k.strip_suffix("_URL"))
        {
            Some(key) if !key.is_empty() => key.to_ascii_lowercase(),
            _ => match var
                .strip_prefix("SAGAFLOW_")
                .and_then(|k| k.strip_suffix("_URL"))
                .map(str::to_ascii_lowercase)
            {
                Some(key) if is_alias(var, &key) => key,
                _ => continue,
            },
        };
        urls.insert(key, (var.clone(), url.trim().to_owned()));
    }
    urls
}

/// Whether the orchestrator reads `var` as another name of participant
/// `key`'s URL variable.
fn is_alias(var: &str, key: &str) -> bool {
    let canonical = sagaflow_orchestrator::config::participant_var(key);
    sagaflow_orchestrator::config::VARS
        .iter()
        .any(|v| v.name == var && v.meaning.ends_with(&format!("alias of {canonical}")))
}

/// One saga definition file the code ships.
#[derive(Debug)]
pub struct Shipped {
    /// Its saga type (`order`, `trip`).
    pub saga_type: String,
    /// The file's text, as the code has it.
    pub text: &'static str,
    /// The participant keys its steps name.
    pub participants: BTreeSet<String>,
}

/// The saga definitions the code ships: the order saga's file (built into
/// the orchestrator) and the trip saga's (only a file). A deployment that
/// runs their participants runs them.
pub fn shipped_definitions() -> Vec<Shipped> {
    [
        (
            sagaflow_orchestrator::definitions::order::FILE_NAME,
            sagaflow_orchestrator::definitions::order::FILE,
        ),
        ("trip.v1.yaml", sagaflow_participants::trip::DEFINITION),
    ]
    .into_iter()
    .map(|(name, text)| {
        let d = sagaflow_orchestrator::definitions::file::parse(name, text, None)
            .unwrap_or_else(|e| panic!("the shipped definition {name}: {e}"));
        Shipped {
            saga_type: d.saga_type,
            text,
            participants: d.steps.into_iter().map(|s| s.participant).collect(),
        }
    })
    .collect()
}

/// Every variable some service binary reads.
pub fn every_var() -> BTreeSet<&'static str> {
    COMMON_VARS
        .iter()
        .chain(sagaflow_orchestrator::config::VARS)
        .chain(sagaflow_participants::config::VARS)
        .chain(sagaflow_participant_kit::config::SHARED_VARS)
        .chain(outbox_relay::config::VARS)
        .map(|v| v.name)
        .collect()
}

/// The workspace's packages and, for each, its `[[bin]]` targets, from
/// `cargo metadata`.
pub fn workspace_bins() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root())
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut packages = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let bins = p["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.contains(&"bin".into()))
            })
            .map(|t| t["name"].as_str().expect("target name").to_owned())
            .collect();
        packages.insert(p["name"].as_str().expect("name").to_owned(), bins);
    }
    packages
}

/// Whether the binaries' sources route `path` (a string literal of it in a
/// service crate or in `common`).
pub fn served(path: &str) -> bool {
    let literal = format!("\"{path}\"");
    [
        "orchestrator/src",
        "participants/src",
        "outbox-relay/src",
        "common/src",
    ]
    .iter()
    .any(|dir| any_source_contains(&root().join(dir), &literal))
}

fn any_source_contains(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let path = entry.path();
            if path.is_dir() {
                any_source_contains(&path, needle)
            } else {
                path.extension().is_some_and(|e| e == "rs")
                    && std::fs::read_to_string(&path).is_ok_and(|s| s.contains(needle))
            }
        })
}

/// The certificates and tokens `tests/compose/make-certs.sh` makes, in a
/// directory of their own (removed on drop). The README and compose.yaml
/// tell operators to make them this way.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn make() -> Self {
        let dir = std::env::temp_dir().join(format!("sagaflow-deploy-{}", uuid::Uuid::new_v4()));
        let out = Command::new("sh")
            .arg(root().join("tests/compose/make-certs.sh"))
            .arg(&dir)
            .output()
            .expect("running make-certs.sh (needs sh and openssl)");
        assert!(
            out.status.success(),
            "make-certs.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    /// Whether make-certs.sh makes a file of this name.
    pub fn has(&self, file: &str) -> bool {
        !file.contains('/') && self.dir.join(file).is_file()
    }

    /// The DNS names in the certificate `file` (none if it makes no such
    /// file).
    pub fn dns_names(&self, file: &str) -> BTreeSet<String> {
        if !self.has(file) {
            return BTreeSet::new();
        }
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(self.dir.join(file))
            .output()
            .expect("running openssl");
        assert!(out.status.success(), "openssl x509 {file}");
        String::from_utf8_lossy(&out.stdout)
            .split([',', '\n'])
            .filter_map(|s| s.trim().strip_prefix("DNS:"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `host:port` of an address or URL (`0.0.0.0:8080`, `https://order:50061`,
/// `postgres://u:p@postgres:5432/db`).
pub fn host_port(address: &str) -> Option<(String, u16)> {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}
