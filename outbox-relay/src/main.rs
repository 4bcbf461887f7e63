//! `sagaflow-outbox-relay`: see the library docs and the README.

use anyhow::Context as _;

const SYNOPSIS: &str = "\
usage: sagaflow-outbox-relay
       sagaflow-outbox-relay --help

Publishes the participants' outbox rows to the Pub/Sub events topic, and
marks them sent once Pub/Sub has them.";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let help = sagaflow_common::config::usage(
        SYNOPSIS,
        &[
            sagaflow_common::config::COMMON_VARS,
            outbox_relay::config::VARS,
        ],
    );
    let args = sagaflow_common::config::Args::from_env_or_exit(&help);
    anyhow::ensure!(args.is_empty(), "unexpected arguments {args:?}\n\n{help}");
    let _telemetry = sagaflow_common::telemetry::init("sagaflow-outbox-relay")?;
    let config = outbox_relay::RelayConfig::from_env().context("reading configuration")?;
    let shutdown = sagaflow_common::shutdown::on_signal();
    outbox_relay::run(config, shutdown).await
}
