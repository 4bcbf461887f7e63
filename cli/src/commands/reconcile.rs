//! `sagaflow reconcile [SAGA_ID...]`: the operator's read-only comparison
//! of finished sagas with what their participants say they did
//! ([`sagaflow_orchestrator::reconcile`]). It reads the orchestrator's own
//! configuration from the environment (its database, the participants'
//! endpoints and TLS), as an operator runs it beside the service.

use std::process::ExitCode;

use sagaflow_orchestrator::{Config, reconcile};
use serde_json::json;

use crate::{Error, exit, say};

pub async fn run(saga_ids: &[String], json: bool) -> Result<ExitCode, Error> {
    let ids: Vec<&str> = saga_ids.iter().map(String::as_str).collect();
    let ids = reconcile::parse_ids(&ids)?;
    let config = Config::from_env()?;
    let mut lines = Vec::new();
    let mut failed_output = None;
    let summary = reconcile::run(&config, &ids, |line| {
        if json {
            lines.push(line);
        } else if failed_output.is_none()
            && let Err(e) = say(&line)
        {
            failed_output = Some(e);
        }
    })
    .await?;
    if let Some(e) = failed_output {
        return Err(e);
    }
    if json {
        say(json!({
            "finished": summary.finished,
            "mismatched": summary.mismatched,
            "in_flight": summary.in_flight,
            "forgotten": summary.forgotten,
            "lines": lines,
        }))?;
    } else {
        say(summary)?;
    }
    Ok(ExitCode::from(if summary.mismatched > 0 {
        exit::MISMATCHES
    } else {
        exit::OK
    }))
}
