//! Read models for the API: a saga row (and its history) as `pb::Saga`,
//! listing with a state filter and keyset paging.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use prost::Message as _;
use sagaflow_protos::orchestrator::v1 as pb;
use sagaflow_protos::participant::v1::OrderInput;
use uuid::Uuid;

use crate::definitions::{self, order};
use crate::saga::{SagaState, Status};
use crate::store;

pub fn state_of(status: Status) -> pb::SagaState {
    match status {
        Status::Running => pb::SagaState::Running,
        Status::Compensating => pb::SagaState::Compensating,
        Status::Completed => pb::SagaState::Completed,
        Status::Compensated => pb::SagaState::Compensated,
        Status::CompensationFailed => pb::SagaState::CompensationFailed,
        Status::Suspended => pb::SagaState::Suspended,
    }
}

pub fn status_of(state: i32) -> Option<Status> {
    match pb::SagaState::try_from(state).ok()? {
        pb::SagaState::Unspecified => None,
        pb::SagaState::Running => Some(Status::Running),
        pb::SagaState::Compensating => Some(Status::Compensating),
        pb::SagaState::Completed => Some(Status::Completed),
        pb::SagaState::Compensated => Some(Status::Compensated),
        pb::SagaState::CompensationFailed => Some(Status::CompensationFailed),
        pb::SagaState::Suspended => Some(Status::Suspended),
    }
}

pub(crate) fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Position after the last saga of a page: (created_at µs, saga id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    pub created_micros: i64,
    pub saga_id: Uuid,
}

impl PageToken {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_micros, self.saga_id.simple())
    }

    /// `None` unless `s` is a token [`encode`](Self::encode) could have
    /// made: a time within year 1970..=9999 and a saga id.
    pub fn decode(s: &str) -> Option<PageToken> {
        if s.len() > 64 {
            return None;
        }
        let (a, b) = s.split_once('.')?;
        let created_micros: i64 = a.parse().ok()?;
        if !(0..=crate::saga::LATEST.saturating_mul(1000)).contains(&created_micros) {
            return None;
        }
        Some(PageToken {
            created_micros,
            saga_id: Uuid::parse_str(b).ok()?,
        })
    }
}

pub(crate) const COLUMNS: &str =
    "saga_id, saga_type, definition_version, state, reason, created_at,
                       updated_at, input, idempotency_key, traceparent, status";

/// An order saga's input as JSON: the fields StartSaga takes for it.
fn order_json(o: &OrderInput) -> String {
    serde_json::json!({
        "customer_id": o.customer_id,
        "items": o.items.iter().map(|i| serde_json::json!({"sku": i.sku, "quantity": i.quantity})).collect::<Vec<_>>(),
        "amount_cents": o.amount_cents,
        "currency": o.currency,
    })
    .to_string()
}

pub(crate) fn saga_of(row: &tokio_postgres::Row) -> pb::Saga {
    let saga_id: Uuid = row.get(0);
    let saga_type: String = row.get(1);
    let version = row.get::<_, i32>(2) as u32;
    let state: Option<SagaState> = serde_json::from_value(row.get(3)).ok();
    let def = definitions::find(&saga_type, version);
    let input: Vec<u8> = row.get(7);
    let traceparent: Option<String> = row.get(9);
    // The status column is authoritative: a saga suspended because its
    // state cannot be read says so there.
    let status: String = row.get(10);
    let mut saga = pb::Saga {
        saga_id: saga_id.to_string(),
        state: Status::parse(&status).map(state_of).unwrap_or_default() as i32,
        saga_type,
        definition_version: version,
        reason: row.get::<_, Option<String>>(4).unwrap_or_default(),
        created_at: Some(ts(row.get(5))),
        updated_at: Some(ts(row.get(6))),
        order: None,
        idempotency_key: row.get(8),
        trace_id: traceparent
            .as_deref()
            .and_then(|tp| tp.split('-').nth(1))
            .unwrap_or_default()
            .to_owned(),
        ..Default::default()
    };
    if saga.saga_type == order::SAGA_TYPE {
        saga.order = OrderInput::decode(input.as_slice()).ok();
        saga.input_json = saga.order.as_ref().map(order_json).unwrap_or_default();
    } else {
        // Stored as canonical JSON (StartSaga).
        saga.input_json = String::from_utf8_lossy(&input).into_owned();
    }
    if let Some(state) = state {
        // Paused: the step whose undo failed (what RetrySaga re-sends).
        // Compensating or compensated: the step whose failure, or
        // cancellation, started it.
        saga.failed_step = state
            .failed_step
            .and_then(|i| def.as_ref()?.steps.get(i).map(|s| s.name.clone()))
            .unwrap_or_default();
        saga.steps = state
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let sd = def.as_ref().and_then(|d| d.steps.get(i));
                pb::StepStatus {
                    index: i as u32,
                    name: sd.map(|d| d.name.clone()).unwrap_or_default(),
                    participant: sd.map(|d| d.participant.clone()).unwrap_or_default(),
                    status: s.state.as_str().to_owned(),
                    attempts: s.attempts,
                    reason: s.reason.clone().unwrap_or_default(),
                    compensation_attempts: s.compensation_attempts,
                    compensation_generation: s.compensation_generation,
                    action_generation: s.action_generation,
                    output_json: s.output.as_ref().map(|o| o.to_string()).unwrap_or_default(),
                    group: sd.and_then(|d| d.group.clone()).unwrap_or_default(),
                }
            })
            .collect();
    }
    saga
}

/// One saga with its full history, or `None`.
pub async fn get(pool: &Pool, saga_id: Uuid) -> Result<Option<pb::Saga>, store::Error> {
    let client = pool.get().await?;
    let Some(row) = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM sagas WHERE saga_id = $1"),
            &[&saga_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut saga = saga_of(&row);
    saga.history = history_after(&client, saga_id, 0).await?;
    Ok(Some(saga))
}

/// History entries with `seq > after`, in order.
pub async fn history_after(
    client: &impl deadpool_postgres::GenericClient,
    saga_id: Uuid,
    after: i64,
) -> Result<Vec<pb::HistoryEntry>, store::Error> {
    let rows = client
        .query(
            "SELECT seq, at, kind, status, detail FROM saga_history
             WHERE saga_id = $1 AND seq > $2 ORDER BY seq",
            &[&saga_id, &after],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| pb::HistoryEntry {
            seq: r.get::<_, i64>(0) as u64,
            at: Some(ts(r.get(1))),
            kind: r.get(2),
            state: Status::parse(r.get(3)).map(state_of).unwrap_or_default() as i32,
            detail: r.get(4),
        })
        .collect())
}

/// Newest first, filtered by status, after `after`.
pub async fn list(
    pool: &Pool,
    states: &[Status],
    page_size: u32,
    after: Option<PageToken>,
) -> Result<pb::ListSagasResponse, store::Error> {
    let client = pool.get().await?;
    let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    let (micros, id) = after
        .map(|t| (t.created_micros, t.saga_id))
        .unwrap_or((i64::MAX, Uuid::max()));
    let after_time =
        DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or(DateTime::<Utc>::MAX_UTC);
    let limit = i64::from(page_size) + 1;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM sagas
                 WHERE (cardinality($1::text[]) = 0 OR status = ANY($1))
                   AND (created_at, saga_id) < ($2, $3)
                 ORDER BY created_at DESC, saga_id DESC
                 LIMIT $4"
            ),
            &[&states, &after_time, &id, &limit],
        )
        .await?;
    let more = rows.len() as i64 == limit;
    let page = &rows[..rows.len().min(page_size as usize)];
    let next_page_token = match (more, page.last()) {
        (true, Some(last)) => PageToken {
            created_micros: last.get::<_, DateTime<Utc>>(5).timestamp_micros(),
            saga_id: last.get(0),
        }
        .encode(),
        _ => String::new(),
    };
    Ok(pb::ListSagasResponse {
        sagas: page.iter().map(saga_of).collect(),
        next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let t = PageToken {
            created_micros: 1_700_000_000_123_456,
            saga_id: Uuid::now_v7(),
        };
        assert_eq!(PageToken::decode(&t.encode()), Some(t));
        assert_eq!(PageToken::decode("garbage"), None);
        assert_eq!(PageToken::decode("12.notauuid"), None);
        let id = Uuid::now_v7().simple();
        assert_eq!(
            PageToken::decode(&format!("-8000000000000000000.{id}")),
            None
        );
        assert_eq!(
            PageToken::decode(&format!("9223372036854775807.{id}")),
            None
        );
        assert_eq!(
            PageToken::decode(&format!("{}.{id}", "9".repeat(100))),
            None
        );
    }

    #[test]
    fn every_status_maps_both_ways() {
        for s in Status::ALL {
            assert_eq!(status_of(state_of(s) as i32), Some(s));
        }
        assert_eq!(status_of(0), None);
        assert_eq!(status_of(99), None);
    }
}
