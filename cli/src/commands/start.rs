//! `sagaflow start`: `StartSaga`.

use std::io::Read as _;
use std::process::ExitCode;

use sagaflow_protos::orchestrator::v1::StartSagaRequest;
use serde_json::json;

use crate::connect::Api;
use crate::render::{Table, state_name};
use crate::{Error, say, say_raw};

/// Largest input read from a file or standard input (the API takes 64 KiB;
/// a little more is read so that its own error says so).
const MAX_READ: u64 = 1024 * 1024;

/// The input text: as given, or from `@FILE`, or `-` (standard input).
fn input_text(arg: &str) -> Result<String, Error> {
    let mut text = String::new();
    let read = if arg == "-" {
        std::io::stdin().take(MAX_READ).read_to_string(&mut text)
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_READ).read_to_string(&mut text))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))
    } else {
        return Ok(arg.to_owned());
    };
    read.map_err(|e| anyhow::anyhow!("input: cannot read it: {e}"))?;
    Ok(text)
}

pub async fn run(
    api: &Api,
    saga_type: String,
    input: String,
    idempotency_key: Option<String>,
    json: bool,
) -> Result<ExitCode, Error> {
    let input = input_text(&input)?;
    let idempotency_key = idempotency_key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut client = api.client().await?;
    let started = client
        .start_saga(StartSagaRequest {
            saga_type: saga_type.clone(),
            input,
            idempotency_key: idempotency_key.clone(),
        })
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    if json {
        say(json!({
            "saga_id": started.saga_id,
            "saga_type": saga_type,
            "created": started.created,
            "state": state_name(started.state),
            "idempotency_key": idempotency_key,
        }))?;
    } else {
        let mut t = Table::new(&["saga", started.saga_id.as_str()]);
        t.row(vec!["type".into(), saga_type]);
        t.row(vec![
            "created".into(),
            if started.created {
                "yes".into()
            } else {
                "no (started before with this idempotency key)".into()
            },
        ]);
        t.row(vec!["state".into(), state_name(started.state)]);
        t.row(vec!["idempotency key".into(), idempotency_key]);
        say_raw(&t.render())?;
    }
    super::ok()
}
