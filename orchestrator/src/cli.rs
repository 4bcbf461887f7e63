//! What a command-line client needs to know about a local orchestrator:
//! the URL of its API. The operator commands (`dead-letters`, `reconcile`)
//! and the client commands live in the `sagaflow` binary (crate
//! `sagaflow-cli`, docs/cli.md).

/// The orchestrator's listen address (`SAGAFLOW_ORCHESTRATOR_LISTEN`) as a
/// URL a local client can reach (`scheme` is `https` or `http`): an
/// unspecified host becomes `127.0.0.1`.
pub fn default_api_url(scheme: &str) -> String {
    let listen = crate::config::listen_addr();
    let (host, port) = listen
        .rsplit_once(':')
        .unwrap_or((listen.as_str(), "50051"));
    let host = match host {
        "" | "0.0.0.0" | "[::]" => "127.0.0.1",
        h => h,
    };
    format!("{scheme}://{host}:{port}")
}
