//! `ListDefinitions` and `GetDefinition`: the stored definitions, as the
//! API shows them.

use sagaflow_protos::orchestrator::v1 as pb;
use tonic::Status;

use super::invalid;
use crate::definitions::{file, stored};
use crate::saga::Policy;

fn policy(p: &Policy) -> pb::StepPolicy {
    pb::StepPolicy {
        attempts: p.max_attempts,
        deadline_ms: p.deadline.as_millis() as u64,
        backoff_base_ms: p.backoff_base.as_millis() as u64,
        backoff_cap_ms: p.backoff_cap.as_millis() as u64,
        jitter_percent: p.jitter_percent.into(),
    }
}

fn view(s: stored::Stored, newest: bool) -> pb::SagaDefinition {
    let d = s.definition;
    pb::SagaDefinition {
        saga_type: d.saga_type,
        version: d.version,
        hash: s.hash,
        source: s.source,
        stored_at: Some(crate::views::ts(s.stored_at)),
        newest,
        input_schema_json: d
            .input_schema
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        steps: d
            .steps
            .iter()
            .map(|st| pb::StepDefinition {
                name: st.name.clone(),
                participant: st.participant.clone(),
                action: st.action.clone(),
                compensation: st.compensation.clone().unwrap_or_default(),
                policy: Some(policy(&st.policy)),
                compensation_policy: st
                    .compensation
                    .as_ref()
                    .map(|_| policy(&st.compensation_policy)),
                forward_only: st.forward_only,
                group: st.group.clone().unwrap_or_default(),
                input: st.input.clone().unwrap_or_default().into_iter().collect(),
                compensation_input: st
                    .compensation_input
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            })
            .collect(),
    }
}

fn saga_type(t: &str) -> Result<Option<&str>, Status> {
    match t {
        "" => Ok(None),
        t => {
            file::check_type_name(t).map_err(|p| invalid("saga_type", p))?;
            Ok(Some(t))
        }
    }
}

fn unavailable(e: anyhow::Error) -> Status {
    Status::unavailable(format!("reading the stored definitions: {e:#}"))
}

/// Every stored definition (of one type), newest version first per type.
pub async fn list(
    pool: &deadpool_postgres::Pool,
    req: pb::ListDefinitionsRequest,
) -> Result<pb::ListDefinitionsResponse, Status> {
    let t = saga_type(&req.saga_type)?;
    let rows = stored::list(pool, t).await.map_err(unavailable)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut last_type: Option<String> = None;
    for s in rows {
        let newest = last_type.as_deref() != Some(s.definition.saga_type.as_str());
        last_type = Some(s.definition.saga_type.clone());
        out.push(view(s, newest));
    }
    Ok(pb::ListDefinitionsResponse { definitions: out })
}

/// One stored definition (version 0: the newest).
pub async fn get(
    pool: &deadpool_postgres::Pool,
    req: pb::GetDefinitionRequest,
) -> Result<pb::SagaDefinition, Status> {
    let t = saga_type(&req.saga_type)?.ok_or_else(|| invalid("saga_type", "is required"))?;
    let rows = stored::list(pool, Some(t)).await.map_err(unavailable)?;
    let newest = rows.first().map(|s| s.definition.version);
    let found = rows
        .into_iter()
        .find(|s| req.version == 0 || s.definition.version == req.version);
    match found {
        Some(s) => {
            let is_newest = Some(s.definition.version) == newest;
            Ok(view(s, is_newest))
        }
        None if req.version == 0 => Err(Status::not_found(format!(
            "saga_type: no definition of {t} is stored"
        ))),
        None => Err(Status::not_found(format!(
            "version: {t} has no version {}",
            req.version
        ))),
    }
}
