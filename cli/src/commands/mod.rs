//! One module per command; [`run`] dispatches.

mod deadletters;
mod definitions;
mod get;
mod list;
mod operate;
mod place;
mod reconcile;
mod start;
pub mod watch;

use std::process::ExitCode;

use crate::Error;
use crate::args::{Cli, Command};
use crate::connect::Api;

/// Run the parsed command line.
pub async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let json = cli.json;
    let api = || Api::from_args(&cli.api);
    match cli.command {
        Command::Place(a) => place::run(&api()?, a, json).await,
        Command::Start {
            saga_type,
            input,
            idempotency_key,
        } => start::run(&api()?, saga_type, input, idempotency_key, json).await,
        Command::Get { saga_id } => get::run(&api()?, saga_id, json).await,
        Command::List(a) => list::run(&api()?, a, json).await,
        Command::Watch(a) => watch::run(&api()?, a, json).await,
        Command::Retry {
            saga_id,
            reason,
            request_id,
        } => operate::retry(&api()?, saga_id, reason, request_id, json).await,
        Command::Cancel {
            saga_id,
            reason,
            request_id,
        } => operate::cancel(&api()?, saga_id, reason, request_id, json).await,
        Command::DeadLetters(a) => deadletters::run(&api()?, a, json).await,
        Command::Definitions { saga_type, version } => {
            definitions::run(&api()?, saga_type, version, json).await
        }
        // It reads the orchestrator's own settings, not the API's.
        Command::Reconcile { saga_ids } => reconcile::run(&saga_ids, json).await,
    }
}

/// The exit status of a command that did what it was asked.
fn ok() -> Result<ExitCode, Error> {
    Ok(ExitCode::from(crate::exit::OK))
}
