//! `sagaflow retry` and `sagaflow cancel`: the operator actions `RetrySaga`
//! and `CancelSaga` (an operator token).

use std::process::ExitCode;

use sagaflow_protos::orchestrator::v1::{CancelSagaRequest, RetrySagaRequest, Saga};

use crate::connect::Api;
use crate::{Error, render, say, say_raw};

pub async fn retry(
    api: &Api,
    saga_id: String,
    reason: Option<String>,
    request_id: Option<String>,
    json: bool,
) -> Result<ExitCode, Error> {
    let mut client = api.client().await?;
    let saga = client
        .retry_saga(RetrySagaRequest {
            saga_id,
            reason: reason.unwrap_or_default(),
            request_id: request_id.unwrap_or_default(),
        })
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    show(&saga, json)
}

pub async fn cancel(
    api: &Api,
    saga_id: String,
    reason: String,
    request_id: Option<String>,
    json: bool,
) -> Result<ExitCode, Error> {
    let mut client = api.client().await?;
    let saga = client
        .cancel_saga(CancelSagaRequest {
            saga_id,
            reason,
            request_id: request_id.unwrap_or_default(),
        })
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    show(&saga, json)
}

/// The saga as the action left it.
fn show(saga: &Saga, json: bool) -> Result<ExitCode, Error> {
    if json {
        say(render::saga_json(saga))?;
    } else {
        say_raw(&render::saga(saga))?;
    }
    super::ok()
}
