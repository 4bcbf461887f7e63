//! `sagaflow-orchestrator`: see the crate docs and the README. It takes no
//! arguments but `--help`; the operator commands are the `sagaflow` binary's
//! (`sagaflow dead-letters …`, `sagaflow reconcile …`, docs/cli.md).

use sagaflow_orchestrator::Config;

const SYNOPSIS: &str = "\
usage: sagaflow-orchestrator          serve
       sagaflow-orchestrator --help   this text

Runs sagas: persists each as a state machine in Postgres, sends step commands
to participants over gRPC and applies their outcome events from Pub/Sub.
The operator commands (dead letters, reconciliation) are `sagaflow`'s:
`sagaflow --help`.";

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
    if let Some(arg) = args.first() {
        let moved = matches!(arg.as_str(), "dead-letters" | "reconcile");
        anyhow::bail!(
            "unexpected argument {arg:?}{}\n\n{SYNOPSIS}",
            if moved {
                format!(": use `sagaflow {arg} …` (docs/cli.md)")
            } else {
                String::new()
            }
        );
    }
    let _telemetry = sagaflow_common::telemetry::init("sagaflow-orchestrator")?;
    serve(Config::from_env()?).await
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.listen.clone();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let shutdown = sagaflow_common::shutdown::on_signal();
    sagaflow_orchestrator::run(config, listener, shutdown).await
}
