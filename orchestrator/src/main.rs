//! `sagaflow-orchestrator`: see the crate docs and the README.
//!
//! ```text
//! sagaflow-orchestrator                          serve (the default)
//! sagaflow-orchestrator dead-letters list [N]    the newest N dead letters (default 50) and the total
//! sagaflow-orchestrator dead-letters redrive     re-publish every dead letter not yet re-driven
//! sagaflow-orchestrator dead-letters redrive ID… re-publish these
//! ```
//!
//! The `dead-letters` commands call a running orchestrator's API
//! ([`sagaflow_orchestrator::cli`]).

use sagaflow_orchestrator::{Config, cli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = sagaflow_common::telemetry::init("sagaflow-orchestrator")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => serve(Config::from_env()?).await,
        ["dead-letters", rest @ ..] => cli::dead_letters(rest).await,
        _ => anyhow::bail!("{}", cli::USAGE),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = sagaflow_orchestrator::config::listen_addr();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let shutdown = sagaflow_common::shutdown::on_signal();
    sagaflow_orchestrator::run(config, listener, shutdown).await
}
