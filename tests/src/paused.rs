//! The operator's part when sagas pause (`COMPENSATION_FAILED`): list them
//! through the API (`ListSagas` by state) and, once the cause is fixed,
//! retry each one (`RetrySaga`), as docs/operating.md says.

use sagaflow_protos::orchestrator::v1::{ListSagasRequest, RetrySagaRequest, SagaState};

use crate::system::System;

/// What a round of retries did.
#[derive(Debug, Default, Clone)]
pub struct Retried {
    /// Paused sagas listed.
    pub listed: usize,
    /// `RetrySaga` calls accepted.
    pub retried: usize,
    /// Calls refused (the saga moved on meanwhile), with why.
    pub refused: Vec<String>,
}

/// Every saga paused in COMPENSATION_FAILED, by id.
pub async fn list(sys: &System) -> anyhow::Result<Vec<String>> {
    let mut client = sys.client().await?;
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_sagas(ListSagasRequest {
                states: vec![SagaState::CompensationFailed as i32],
                page_size: 500,
                page_token: token,
            })
            .await?
            .into_inner();
        ids.extend(page.sagas.into_iter().map(|s| s.saga_id));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        token = page.next_page_token;
    }
}

/// List the paused sagas and retry each; `round` makes the request ids of
/// this round unique (a repeat of the same round is a no-op).
pub async fn retry_all(sys: &System, round: u32, reason: &str) -> anyhow::Result<Retried> {
    let ids = list(sys).await?;
    let mut client = sys.client().await?;
    let mut r = Retried {
        listed: ids.len(),
        ..Retried::default()
    };
    for id in ids {
        let call = client
            .retry_saga(RetrySagaRequest {
                saga_id: id.clone(),
                reason: reason.to_owned(),
                request_id: format!("retry-{id}-{round}"),
            })
            .await;
        match call {
            Ok(_) => r.retried += 1,
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                r.refused.push(format!("{id}: {}", s.message()))
            }
            Err(s) => anyhow::bail!("RetrySaga {id}: {s}"),
        }
    }
    Ok(r)
}
