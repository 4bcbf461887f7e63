//! `sagaflow-outbox-relay`: see the library docs and the README.

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = sagaflow_common::telemetry::init("sagaflow-outbox-relay")?;
    let config = outbox_relay::RelayConfig::from_env().context("reading configuration")?;
    let shutdown = sagaflow_common::shutdown::on_signal();
    outbox_relay::run(config, shutdown).await
}
