//! `sagaflow-orchestrator`: see the crate docs and the README.
//!
//! ```text
//! sagaflow-orchestrator                          serve (the default)
//! sagaflow-orchestrator dead-letters list [N]    the newest N dead letters (default 50) and the total
//! sagaflow-orchestrator dead-letters redrive     re-publish every dead letter not yet re-driven
//! sagaflow-orchestrator dead-letters redrive ID… re-publish these
//! sagaflow-orchestrator reconcile [SAGA_ID…]     compare finished sagas with their participants
//! ```

use sagaflow_common::pubsub::{EventPublisher, PubSubConfig};
use std::io::Write as _;

use sagaflow_orchestrator::{Config, deadletter, reconcile};

const USAGE: &str = "usage: sagaflow-orchestrator [dead-letters (list [N] | redrive [ID...]) | reconcile [SAGA_ID...]]";

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
    let config = Config::from_env()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => serve(config).await,
        ["dead-letters", "list", rest @ ..] => {
            let limit: i64 = match rest {
                [] => 50,
                [n] => n.parse().map_err(|_| anyhow::anyhow!("{USAGE}"))?,
                _ => anyhow::bail!("{USAGE}"),
            };
            let pool = sagaflow_common::db::pool(&config.database_url, 2)?;
            sagaflow_common::db::migrate(&pool, &sagaflow_orchestrator::migrations()).await?;
            let (total, letters) = deadletter::list(&pool, limit).await?;
            println!("dead letters: {total}");
            for d in letters {
                println!(
                    "{}\t{}\t{}\tsaga={}\tevent={}\t{} bytes\t{}",
                    d.id,
                    d.dead_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    d.redriven_at
                        .map(|t| format!("redriven {}", t.format("%H:%M:%S")))
                        .unwrap_or_else(|| "pending".into()),
                    d.saga_id.unwrap_or_default(),
                    d.event_id.unwrap_or_default(),
                    d.data_len,
                    d.reason
                );
            }
            Ok(())
        }
        ["dead-letters", "redrive", ids @ ..] => {
            let ids: Vec<i64> = ids
                .iter()
                .map(|i| {
                    i.parse()
                        .map_err(|_| anyhow::anyhow!("not a dead letter id: {i}"))
                })
                .collect::<anyhow::Result<_>>()?;
            let pool = sagaflow_common::db::pool(&config.database_url, 2)?;
            let publisher =
                EventPublisher::new(&PubSubConfig::from_env(), &config.events_topic, 64).await?;
            let n = deadletter::redrive(
                &pool,
                &publisher,
                (!ids.is_empty()).then_some(ids.as_slice()),
            )
            .await?;
            publisher.shutdown().await;
            println!("re-drove {n} dead letters to {}", config.events_topic);
            Ok(())
        }
        ["reconcile", ids @ ..] => {
            let ids = reconcile::parse_ids(ids)?;
            let summary = reconcile::run(&config, &ids, |line| println!("{line}")).await?;
            println!("{summary}");
            if summary.mismatched > 0 {
                std::io::stdout().flush()?;
                std::process::exit(MISMATCHES_FOUND);
            }
            Ok(())
        }
        _ => anyhow::bail!("{USAGE}"),
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
