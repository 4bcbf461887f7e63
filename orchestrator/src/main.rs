//! `sagaflow-orchestrator`: see the crate docs and the README.
//!
//! ```text
//! sagaflow-orchestrator                          serve (the default)
//! sagaflow-orchestrator dead-letters list [N]    the newest N dead letters (default 50) and the total
//! sagaflow-orchestrator dead-letters redrive     re-publish every dead letter not yet re-driven
//! sagaflow-orchestrator dead-letters redrive ID… re-publish these
//! sagaflow-orchestrator reconcile [SAGA_ID…]     compare finished sagas with their participants
//! ```
//!
//! The `dead-letters` commands call a running orchestrator's API
//! ([`sagaflow_orchestrator::cli`]).

use std::io::Write as _;

use sagaflow_orchestrator::{Config, cli, reconcile};

/// Exit status of `reconcile` when it found mismatches (errors exit 1).
const MISMATCHES_FOUND: i32 = 3;

const SYNOPSIS: &str = "\
usage: sagaflow-orchestrator                          serve (the default)
       sagaflow-orchestrator dead-letters list [N]    the newest N dead letters (default 50) and the total
       sagaflow-orchestrator dead-letters redrive     re-publish every dead letter not yet re-driven
       sagaflow-orchestrator dead-letters redrive ID… re-publish these
       sagaflow-orchestrator reconcile [SAGA_ID…]     compare finished sagas with what their participants did
       sagaflow-orchestrator --help                   this text

Runs sagas: persists each as a state machine in Postgres, sends step commands
to participants over gRPC and applies their outcome events from Pub/Sub.";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let help = sagaflow_common::config::usage(
        SYNOPSIS,
        &[
            sagaflow_common::config::COMMON_VARS,
            sagaflow_orchestrator::config::VARS,
        ],
    );
    let args = sagaflow_common::config::Args::from_env_or_exit(&help);
    let _telemetry = sagaflow_common::telemetry::init("sagaflow-orchestrator")?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => serve(Config::from_env()?).await,
        ["dead-letters", rest @ ..] => cli::dead_letters(rest).await,
        ["reconcile", ids @ ..] => {
            let config = Config::from_env()?;
            let ids = reconcile::parse_ids(ids)?;
            let summary = reconcile::run(&config, &ids, |line| println!("{line}")).await?;
            println!("{summary}");
            if summary.mismatched > 0 {
                std::io::stdout().flush()?;
                std::process::exit(MISMATCHES_FOUND);
            }
            Ok(())
        }
        _ => anyhow::bail!("{}", cli::USAGE),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.listen.clone();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let shutdown = sagaflow_common::shutdown::on_signal();
    sagaflow_orchestrator::run(config, listener, shutdown).await
}
