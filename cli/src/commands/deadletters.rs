//! `sagaflow dead-letters list | redrive`: `ListDeadLetters` and
//! `RedriveDeadLetters` (an operator token), so they pass the same checks as
//! any other client and need no database or Pub/Sub access.

use std::process::ExitCode;

use sagaflow_protos::orchestrator::v1::{ListDeadLettersRequest, RedriveDeadLettersRequest};
use serde_json::json;

use crate::args::DeadLetters;
use crate::connect::Api;
use crate::{Error, render, say, say_raw};

pub async fn run(api: &Api, a: DeadLetters, json: bool) -> Result<ExitCode, Error> {
    let mut client = api.client().await?;
    match a {
        DeadLetters::List { limit } => {
            let listed = client
                .list_dead_letters(ListDeadLettersRequest { limit })
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            if json {
                say(json!({
                    "total": listed.total,
                    "dead_letters": listed.dead_letters.iter().map(render::dead_letter_json).collect::<Vec<_>>(),
                }))?;
            } else {
                say(format!("dead letters: {}", listed.total))?;
                if !listed.dead_letters.is_empty() {
                    say_raw(&render::dead_letters(&listed.dead_letters).render())?;
                }
            }
        }
        DeadLetters::Redrive { all, ids } => {
            let done = client
                .redrive_dead_letters(RedriveDeadLettersRequest {
                    ids,
                    all_pending: all,
                })
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            if json {
                say(json!({"redriven": done.redriven, "topic": done.topic}))?;
            } else {
                say(format!(
                    "re-drove {} dead letters to {}",
                    done.redriven,
                    render::clean(&done.topic)
                ))?;
            }
        }
    }
    super::ok()
}
