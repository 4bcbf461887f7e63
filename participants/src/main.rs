//! `sagaflow-participant order|payment|inventory|flight|hotel|car|trip`: run one participant
//! service. Settings come from the environment (see `config`).

use anyhow::Context as _;
use sagaflow_common::{shutdown, telemetry};
use sagaflow_participants::{Kind, serve};

const USAGE: &str = "usage: sagaflow-participant order|payment|inventory|flight|hotel|car|trip";

const SYNOPSIS: &str = "\
usage: sagaflow-participant order|payment|inventory|flight|hotel|car|trip
       sagaflow-participant --help

Runs one participant service: each step command is handled in one Postgres
transaction (inbox row, business change, outbox event).";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let help = sagaflow_common::config::usage(
        SYNOPSIS,
        &[
            sagaflow_common::config::COMMON_VARS,
            sagaflow_participants::config::VARS,
            sagaflow_participant_kit::config::SHARED_VARS,
        ],
    );
    let args = sagaflow_common::config::Args::from_env_or_exit(&help);
    let kind: Kind = match args.as_slice() {
        [kind] => kind.parse().context(USAGE)?,
        _ => anyhow::bail!("{USAGE}"),
    };
    let _telemetry = telemetry::init(&format!("sagaflow-{kind}"))?;
    let config = kind.config_from_env()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    serve(kind, config, listener, shutdown::on_signal()).await
}
