//! `sagaflow get`: `GetSaga`.

use std::process::ExitCode;

use sagaflow_protos::orchestrator::v1::GetSagaRequest;

use crate::connect::Api;
use crate::{Error, render, say, say_raw};

pub async fn run(api: &Api, saga_id: String, json: bool) -> Result<ExitCode, Error> {
    let mut client = api.client().await?;
    let saga = client
        .get_saga(GetSagaRequest { saga_id })
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    if json {
        say(render::saga_json(&saga))?;
    } else {
        say_raw(&render::saga(&saga))?;
    }
    super::ok()
}
