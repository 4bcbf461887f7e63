//! `sagaflow-participant order|payment|inventory`: run one participant
//! service. Settings come from the environment (see `config`).

use anyhow::Context as _;
use sagaflow_common::{shutdown, telemetry};
use sagaflow_participants::{Kind, ParticipantConfig, serve};

const USAGE: &str = "usage: sagaflow-participant order|payment|inventory";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kind: Kind = std::env::args()
        .nth(1)
        .context(USAGE)?
        .parse()
        .context(USAGE)?;
    let _telemetry = telemetry::init(&format!("sagaflow-{kind}"))?;
    let config = ParticipantConfig::from_env(kind)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    serve(kind, config, listener, shutdown::on_signal()).await
}
