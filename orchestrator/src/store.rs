//! The orchestrator's Postgres persistence: saga rows, their history and the
//! record of applied events.
//!
//! Every state change happens in one transaction that locks the saga row
//! (`FOR UPDATE`), so concurrent orchestrator instances serialise on a saga and
//! none advances it twice; `processed_events` (primary key = event id) makes a
//! redelivered event a no-op. Each change appends a history row with the next
//! sequence number and `NOTIFY sagaflow_saga` with the saga id, so any
//! instance can stream any saga live.

use chrono::{DateTime, TimeZone, Utc};
use deadpool_postgres::{GenericClient, Pool};
use sagaflow_common::db::Migration;
use uuid::Uuid;

use crate::definitions;
use crate::saga::{self, Effect, Event, Millis, Note, SagaState, Status};

/// The channel history changes are announced on (payload: the saga id).
pub const HISTORY_CHANNEL: &str = "sagaflow_saga";

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "sagas",
    sql: r#"
CREATE TABLE sagas (
    saga_id            uuid PRIMARY KEY,
    saga_type          text NOT NULL,
    definition_version integer NOT NULL,
    idempotency_key    text NOT NULL,
    input              bytea NOT NULL,
    status             text NOT NULL,
    state              jsonb NOT NULL,
    version            bigint NOT NULL,
    next_wakeup        timestamptz,
    reason             text,
    traceparent        text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (saga_type, idempotency_key)
);
CREATE INDEX sagas_wakeup_idx ON sagas (next_wakeup) WHERE next_wakeup IS NOT NULL;
CREATE INDEX sagas_created_idx ON sagas (created_at DESC, saga_id DESC);
CREATE INDEX sagas_status_created_idx ON sagas (status, created_at DESC, saga_id DESC);

CREATE TABLE saga_history (
    saga_id uuid NOT NULL REFERENCES sagas (saga_id),
    seq     bigint NOT NULL,
    at      timestamptz NOT NULL DEFAULT now(),
    kind    text NOT NULL,
    status  text NOT NULL,
    detail  text NOT NULL,
    PRIMARY KEY (saga_id, seq)
);

CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    saga_id      uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rejected_events (
    id          bigserial PRIMARY KEY,
    message_id  text,
    event_id    text,
    saga_id     text,
    reason      text NOT NULL,
    data        bytea,
    rejected_at timestamptz NOT NULL DEFAULT now()
);
"#,
}];

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("corrupt saga {saga_id}: {reason}")]
    Corrupt { saga_id: Uuid, reason: String },
}

/// What the driver needs to carry out effects for a saga.
#[derive(Debug, Clone)]
pub struct SagaContext {
    pub saga_id: Uuid,
    pub saga_type: String,
    pub definition_version: u32,
    pub input: Vec<u8>,
    pub traceparent: Option<String>,
}

/// A saga to create.
pub struct NewSaga {
    pub saga_id: Uuid,
    pub idempotency_key: String,
    pub definition: saga::Definition,
    pub input: Vec<u8>,
    pub traceparent: Option<String>,
    pub now: Millis,
}

pub enum Placed {
    Created {
        ctx: SagaContext,
        state: SagaState,
        effects: Vec<Effect>,
    },
    /// The idempotency key was used before.
    Existing {
        saga_id: Uuid,
        status: Status,
        same_input: bool,
    },
}

/// Outcome of applying one event.
pub enum Applied {
    /// The event id was applied before.
    Duplicate,
    /// No saga has that id.
    UnknownSaga,
    /// The state machine refused the event (recorded in `rejected_events`).
    Rejected(saga::Error),
    /// Applied; `effects` are to be carried out now that it is committed.
    Changed {
        ctx: SagaContext,
        state: SagaState,
        effects: Vec<Effect>,
    },
    /// Applied, but nothing changed (late or duplicate in the machine's view).
    Unchanged,
}

pub fn to_time(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
}

pub fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// Insert a new saga (already started: `Event::Start` applied) unless its
/// idempotency key exists.
pub async fn place(pool: &Pool, new: NewSaga) -> Result<Placed, Error> {
    let def = &new.definition;
    let t = saga::apply(
        def,
        &SagaState::new(def.steps.len()),
        &Event::Start,
        new.now,
    )
    .map_err(|e| Error::Corrupt {
        saga_id: new.saga_id,
        reason: e.to_string(),
    })?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let state_json = serde_json::to_value(&t.state).expect("state serialises");
    let inserted = tx
        .query_opt(
            "INSERT INTO sagas (saga_id, saga_type, definition_version, idempotency_key, input,
                                status, state, version, next_wakeup, traceparent)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9)
             ON CONFLICT (saga_type, idempotency_key) DO NOTHING
             RETURNING saga_id",
            &[
                &new.saga_id,
                &def.saga_type,
                &(def.version as i32),
                &new.idempotency_key,
                &new.input,
                &t.state.status.as_str(),
                &state_json,
                &t.state.deadline.map(to_time),
                &new.traceparent,
            ],
        )
        .await?;
    if inserted.is_none() {
        let row = tx
            .query_one(
                "SELECT saga_id, status, input FROM sagas WHERE saga_type = $1 AND idempotency_key = $2",
                &[&def.saga_type, &new.idempotency_key],
            )
            .await?;
        let saga_id: Uuid = row.get(0);
        let status: String = row.get(1);
        let input: Vec<u8> = row.get(2);
        tx.commit().await?;
        return Ok(Placed::Existing {
            saga_id,
            status: parse_status(saga_id, &status)?,
            same_input: input == new.input,
        });
    }
    let note = t.note.clone().unwrap_or(Note {
        kind: "placed",
        detail: String::new(),
    });
    append_history(
        &tx,
        new.saga_id,
        1,
        "placed",
        t.state.status,
        &format!("placed; {}", note.detail),
    )
    .await?;
    tx.commit().await?;
    Ok(Placed::Created {
        ctx: SagaContext {
            saga_id: new.saga_id,
            saga_type: def.saga_type.clone(),
            definition_version: def.version,
            input: new.input,
            traceparent: new.traceparent,
        },
        state: t.state,
        effects: t.effects,
    })
}

async fn append_history(
    tx: &impl GenericClient,
    saga_id: Uuid,
    seq: i64,
    kind: &str,
    status: Status,
    detail: &str,
) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO saga_history (saga_id, seq, kind, status, detail) VALUES ($1, $2, $3, $4, $5)",
        &[&saga_id, &seq, &kind, &status.as_str(), &detail],
    )
    .await?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&HISTORY_CHANNEL, &saga_id.to_string()],
    )
    .await?;
    Ok(())
}

fn parse_status(saga_id: Uuid, s: &str) -> Result<Status, Error> {
    Status::parse(s).ok_or_else(|| Error::Corrupt {
        saga_id,
        reason: format!("unknown status {s:?}"),
    })
}

struct Locked {
    ctx: SagaContext,
    state: SagaState,
    version: i64,
    definition: saga::Definition,
}

async fn lock_saga(tx: &impl GenericClient, saga_id: Uuid) -> Result<Option<Locked>, Error> {
    let Some(row) = tx
        .query_opt(
            "SELECT saga_type, definition_version, input, traceparent, state, version
             FROM sagas WHERE saga_id = $1 FOR UPDATE",
            &[&saga_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let saga_type: String = row.get(0);
    let definition_version: i32 = row.get(1);
    let state: serde_json::Value = row.get(4);
    let corrupt = |reason: String| Error::Corrupt { saga_id, reason };
    let definition = definitions::find(&saga_type, definition_version as u32).ok_or_else(|| {
        corrupt(format!(
            "no definition {saga_type} v{definition_version} in this build"
        ))
    })?;
    let state: SagaState =
        serde_json::from_value(state).map_err(|e| corrupt(format!("state: {e}")))?;
    Ok(Some(Locked {
        ctx: SagaContext {
            saga_id,
            saga_type,
            definition_version: definition_version as u32,
            input: row.get(2),
            traceparent: row.get(3),
        },
        state,
        version: row.get(5),
        definition,
    }))
}

/// Apply `event` to a locked saga inside `tx` and persist the result.
async fn apply_locked(
    tx: &impl GenericClient,
    locked: Locked,
    event: &Event,
    now: Millis,
) -> Result<Result<Applied, saga::Error>, Error> {
    let t = match saga::apply(&locked.definition, &locked.state, event, now) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    let Some(note) = t.note else {
        return Ok(Ok(Applied::Unchanged));
    };
    let version = locked.version + 1;
    let state_json = serde_json::to_value(&t.state).expect("state serialises");
    tx.execute(
        "UPDATE sagas SET state = $2, status = $3, version = $4, next_wakeup = $5, reason = $6,
                          updated_at = now()
         WHERE saga_id = $1",
        &[
            &locked.ctx.saga_id,
            &state_json,
            &t.state.status.as_str(),
            &version,
            &t.state.deadline.map(to_time),
            &t.state.reason,
        ],
    )
    .await?;
    append_history(
        tx,
        locked.ctx.saga_id,
        version,
        note.kind,
        t.state.status,
        &note.detail,
    )
    .await?;
    Ok(Ok(Applied::Changed {
        ctx: locked.ctx,
        state: t.state,
        effects: t.effects,
    }))
}

/// Apply an outcome event exactly once (by event id), in one transaction.
pub async fn apply_event(
    pool: &Pool,
    event_id: Uuid,
    saga_id: Uuid,
    event: &Event,
    now: Millis,
) -> Result<Applied, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let fresh = tx
        .execute(
            "INSERT INTO processed_events (event_id, saga_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&event_id, &saga_id],
        )
        .await?;
    if fresh == 0 {
        tx.commit().await?;
        return Ok(Applied::Duplicate);
    }
    let Some(locked) = lock_saga(&tx, saga_id).await? else {
        tx.rollback().await?;
        return Ok(Applied::UnknownSaga);
    };
    let applied = match apply_locked(&tx, locked, event, now).await? {
        Ok(a) => a,
        Err(e) => Applied::Rejected(e),
    };
    tx.commit().await?;
    Ok(applied)
}

/// Fire every due timer (up to `limit`), each saga in its own transaction,
/// skipping sagas another instance holds.
pub async fn fire_due_timers(pool: &Pool, now: Millis, limit: i64) -> Result<Vec<Applied>, Error> {
    let client = pool.get().await?;
    let due: Vec<Uuid> = client
        .query(
            "SELECT saga_id FROM sagas WHERE next_wakeup <= $1 ORDER BY next_wakeup LIMIT $2",
            &[&to_time(now), &limit],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(client);
    let mut out = Vec::with_capacity(due.len());
    for saga_id in due {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        // SKIP LOCKED: a saga being changed by another transaction is either
        // no longer due, or will be picked up next round.
        let row = tx
            .query_opt(
                "SELECT 1 FROM sagas WHERE saga_id = $1 AND next_wakeup <= $2 FOR UPDATE SKIP LOCKED",
                &[&saga_id, &to_time(now)],
            )
            .await?;
        if row.is_none() {
            continue;
        }
        let Some(locked) = lock_saga(&tx, saga_id).await? else {
            continue;
        };
        match apply_locked(&tx, locked, &Event::Timeout, now).await? {
            Ok(a) => out.push(a),
            Err(e) => {
                tracing::error!(saga.id = %saga_id, error = %e, "timeout rejected");
                // Don't spin on it: clear the wake-up; the saga stays visible.
                tx.execute(
                    "UPDATE sagas SET next_wakeup = NULL WHERE saga_id = $1",
                    &[&saga_id],
                )
                .await?;
            }
        }
        tx.commit().await?;
    }
    Ok(out)
}

/// A page of non-terminal sagas after `after` (for resuming after a restart).
pub async fn in_flight_page(
    pool: &Pool,
    after: Uuid,
    limit: i64,
) -> Result<Vec<(SagaContext, SagaState)>, Error> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT saga_id, saga_type, definition_version, input, traceparent, state FROM sagas
             WHERE status IN ('RUNNING', 'COMPENSATING') AND saga_id > $1
             ORDER BY saga_id LIMIT $2",
            &[&after, &limit],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let saga_id: Uuid = row.get(0);
            let state: SagaState =
                serde_json::from_value(row.get(5)).map_err(|e| Error::Corrupt {
                    saga_id,
                    reason: format!("state: {e}"),
                })?;
            Ok((
                SagaContext {
                    saga_id,
                    saga_type: row.get(1),
                    definition_version: row.get::<_, i32>(2) as u32,
                    input: row.get(3),
                    traceparent: row.get(4),
                },
                state,
            ))
        })
        .collect()
}

/// Record a message the orchestrator could not apply.
pub async fn record_rejection(
    pool: &Pool,
    message_id: &str,
    event_id: Option<&str>,
    saga_id: Option<&str>,
    reason: &str,
    data: &[u8],
) -> Result<(), Error> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO rejected_events (message_id, event_id, saga_id, reason, data)
             VALUES ($1, $2, $3, $4, $5)",
            &[&message_id, &event_id, &saga_id, &reason, &data],
        )
        .await?;
    Ok(())
}
