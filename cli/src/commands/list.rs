//! `sagaflow list`: `ListSagas`, one page.

use std::process::ExitCode;

use sagaflow_protos::orchestrator::v1::ListSagasRequest;
use serde_json::json;

use crate::args::List;
use crate::connect::Api;
use crate::{Error, render, say, say_raw};

pub async fn run(api: &Api, a: List, json: bool) -> Result<ExitCode, Error> {
    let mut client = api.client().await?;
    let page = client
        .list_sagas(ListSagasRequest {
            states: a.states,
            page_size: a.page_size.unwrap_or(0),
            page_token: a.page_token.unwrap_or_default(),
        })
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    if json {
        say(json!({
            "sagas": page.sagas.iter().map(render::saga_json).collect::<Vec<_>>(),
            "next_page_token": page.next_page_token,
        }))?;
        return super::ok();
    }
    if page.sagas.is_empty() {
        say("no sagas")?;
    } else {
        say_raw(&render::saga_list(&page.sagas).render())?;
    }
    if !page.next_page_token.is_empty() {
        say(format!(
            "next page: --page-token {}",
            render::clean(&page.next_page_token)
        ))?;
    }
    super::ok()
}
