//! `sagaflow-orchestrator`: see the crate docs and the README.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = sagaflow_common::telemetry::init("sagaflow-orchestrator")?;
    let config = sagaflow_orchestrator::Config::from_env()?;
    let addr = sagaflow_orchestrator::config::listen_addr();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let shutdown = sagaflow_common::shutdown::on_signal();
    sagaflow_orchestrator::run(config, listener, shutdown).await
}
