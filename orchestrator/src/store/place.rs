//! Placing a saga: insert it, already started, unless its idempotency key
//! was used before.

use deadpool_postgres::{GenericClient, Pool};
use uuid::Uuid;

use super::{Committed, DB_NOW, Error, SagaContext, parse_status, to_time};
use crate::saga::{self, Event, Millis, SagaState, Status};

/// A saga to create.
pub struct NewSaga {
    pub saga_id: Uuid,
    pub idempotency_key: String,
    pub definition: std::sync::Arc<saga::Definition>,
    pub input: Vec<u8>,
    pub traceparent: Option<String>,
}

/// The saga an idempotency key names already.
#[derive(Debug, Clone)]
pub struct Existing {
    pub saga_id: Uuid,
    pub status: Status,
    /// Whether its input equals the one offered now.
    pub same_input: bool,
}

pub enum Placed {
    Created(Box<Committed>),
    /// The idempotency key was used before.
    Existing(Existing),
}

/// The saga of type `saga_type` placed with `key`, if any.
pub async fn find_by_key(
    pool: &Pool,
    saga_type: &str,
    key: &str,
    input: &[u8],
) -> Result<Option<Existing>, Error> {
    let client = pool.get().await?;
    by_key(&client, saga_type, key, input).await
}

async fn by_key(
    client: &impl GenericClient,
    saga_type: &str,
    key: &str,
    input: &[u8],
) -> Result<Option<Existing>, Error> {
    let select = client
        .prepare_cached(
            "SELECT saga_id, status, input FROM sagas WHERE saga_type = $1 AND idempotency_key = $2",
        )
        .await?;
    let Some(row) = client.query_opt(&select, &[&saga_type, &key]).await? else {
        return Ok(None);
    };
    let saga_id: Uuid = row.get(0);
    let stored: Vec<u8> = row.get(2);
    Ok(Some(Existing {
        saga_id,
        status: parse_status(saga_id, row.get(1))?,
        same_input: stored == input,
    }))
}

/// Insert a new saga (already started: `Event::Start` applied at the
/// database's time) unless its idempotency key exists.
pub async fn place(pool: &Pool, new: NewSaga) -> Result<Placed, Error> {
    let def = &new.definition;
    // No explicit transaction: the insert below is one statement (atomic on
    // its own), and the clock read before it locks nothing.
    let client = pool.get().await?;
    let clock = client.prepare_cached(&format!("SELECT {DB_NOW}")).await?;
    let now: Millis = client.query_one(&clock, &[]).await?.get(0);
    let t =
        saga::apply(def, &SagaState::new(def.steps.len()), &Event::Start, now).map_err(|e| {
            Error::Corrupt {
                saga_id: new.saga_id,
                reason: e.to_string(),
            }
        })?;
    let state_json = serde_json::to_value(&t.state).expect("state serialises");
    let detail = match &t.note {
        Some(note) => format!("placed; {}", note.detail),
        None => "placed".to_owned(),
    };
    // One statement: the saga row, its wake-up, its first history entry and
    // the NOTIFY, or nothing at all when the idempotency key is taken.
    let insert = client
        .prepare_cached(
            "WITH saga AS (
                 INSERT INTO sagas (saga_id, saga_type, definition_version, idempotency_key,
                                    input, status, state, version, traceparent)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8)
                 ON CONFLICT (saga_type, idempotency_key) DO NOTHING
                 RETURNING saga_id
             ), wakeup AS (
                 INSERT INTO saga_wakeups (saga_id, due)
                 SELECT saga_id, $9::timestamptz FROM saga WHERE $9::timestamptz IS NOT NULL
             ), history AS (
                 INSERT INTO saga_history (saga_id, seq, kind, status, detail)
                 SELECT saga_id, 1, 'placed', $6, $10 FROM saga
             )
             SELECT pg_notify($11, saga_id::text) FROM saga",
        )
        .await?;
    let inserted = client
        .query(
            &insert,
            &[
                &new.saga_id,
                &def.saga_type,
                &(def.version as i32),
                &new.idempotency_key,
                &new.input,
                &t.state.status.as_str(),
                &state_json,
                &new.traceparent,
                &t.state.deadline.map(to_time),
                &detail,
                &super::HISTORY_CHANNEL,
            ],
        )
        .await?
        .len();
    if inserted == 0 {
        let existing = by_key(&client, &def.saga_type, &new.idempotency_key, &new.input)
            .await?
            .ok_or_else(|| Error::Corrupt {
                saga_id: new.saga_id,
                reason: "idempotency key conflicted but its saga cannot be read".into(),
            })?;
        return Ok(Placed::Existing(existing));
    }
    Ok(Placed::Created(Box::new(Committed {
        ctx: SagaContext {
            saga_id: new.saga_id,
            saga_type: def.saga_type.clone(),
            definition_version: def.version,
            input: new.input,
            traceparent: new.traceparent,
            created_at: now,
        },
        state: t.state,
        effects: t.effects,
        now,
    })))
}
