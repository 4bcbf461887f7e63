//! The orchestrator's Postgres persistence: saga rows, their history and the
//! record of applied events.
//!
//! Every state change happens in one transaction that locks the saga row
//! (`FOR UPDATE`), so concurrent orchestrator instances serialise on a saga and
//! none advances it twice; `processed_events` (primary key = event id) makes a
//! redelivered event a no-op. Each change appends a history row with the next
//! sequence number and `NOTIFY sagaflow_saga` with the saga id, so any
//! instance can stream any saga live.
//!
//! Operator actions (`RetrySaga`, `CancelSaga`) are state machine events
//! applied the same way ([`operate`]); an optional request id, recorded in
//! `operator_requests` in the same transaction, makes a repeat a no-op.

use chrono::{DateTime, TimeZone, Utc};
use deadpool_postgres::{GenericClient, Pool};
use sagaflow_common::db::Migration;
use uuid::Uuid;

use crate::definitions;
use crate::saga::{self, Effect, Event, Millis, Note, SagaState, Status};

/// The channel history changes are announced on (payload: the saga id).
pub const HISTORY_CHANNEL: &str = "sagaflow_saga";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
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
"#,
    },
    Migration {
        version: 2,
        name: "operator requests",
        sql: r#"
CREATE TABLE operator_requests (
    request_id text PRIMARY KEY,
    saga_id    uuid NOT NULL REFERENCES sagas (saga_id),
    action     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"#,
    },
];

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
        state: Box<SagaState>,
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
    /// The state machine refused the event (nothing is recorded, so a
    /// re-driven copy is judged again).
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
        state: Box::new(t.state),
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

/// Apply `event` to a locked saga inside `tx` and persist the result;
/// `annotation` is appended to the history entry's detail.
async fn apply_locked(
    tx: &impl GenericClient,
    locked: Locked,
    event: &Event,
    now: Millis,
    annotation: Option<&str>,
) -> Result<Result<Persisted, saga::Error>, Error> {
    let t = match saga::apply(&locked.definition, &locked.state, event, now) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    let Some(note) = t.note else {
        return Ok(Ok(Persisted::Unchanged));
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
    let detail = match annotation {
        Some(a) => format!("{}; {a}", note.detail),
        None => note.detail,
    };
    append_history(
        tx,
        locked.ctx.saga_id,
        version,
        note.kind,
        t.state.status,
        &detail,
    )
    .await?;
    Ok(Ok(Persisted::Changed {
        ctx: locked.ctx,
        state: Box::new(t.state),
        effects: t.effects,
    }))
}

/// What [`apply_locked`] did.
enum Persisted {
    Changed {
        ctx: SagaContext,
        state: Box<SagaState>,
        effects: Vec<Effect>,
    },
    /// The machine changed nothing (duplicate, late or stale).
    Unchanged,
}

impl From<Persisted> for Applied {
    fn from(p: Persisted) -> Applied {
        match p {
            Persisted::Changed {
                ctx,
                state,
                effects,
            } => Applied::Changed {
                ctx,
                state: *state,
                effects,
            },
            Persisted::Unchanged => Applied::Unchanged,
        }
    }
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
    match apply_locked(&tx, locked, event, now, None).await? {
        Ok(p) => {
            tx.commit().await?;
            Ok(p.into())
        }
        Err(e) => {
            tx.rollback().await?;
            Ok(Applied::Rejected(e))
        }
    }
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
        match apply_locked(&tx, locked, &Event::Timeout, now, None).await? {
            Ok(p) => out.push(p.into()),
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

/// An operator's action on one saga.
pub struct Operation<'a> {
    pub saga_id: Uuid,
    /// [`Event::Retry`] or [`Event::Cancel`].
    pub event: &'a Event,
    /// The client's idempotency key, if it sent one.
    pub request_id: Option<&'a str>,
    /// Appended to the history entry ("operator: payment restored").
    pub annotation: Option<String>,
    pub now: Millis,
}

/// Outcome of an operator action.
#[derive(Debug)]
pub enum Operated {
    /// No saga has that id.
    UnknownSaga,
    /// The request id was applied before, to this saga and action: nothing
    /// was done again.
    Repeated,
    /// The request id was applied before to another saga or action.
    RequestIdReused { saga_id: Uuid, action: String },
    /// The state machine refused the action (nothing written).
    Refused(saga::Error),
    /// Applied; `effects` are to be carried out now that it is committed.
    Changed {
        ctx: SagaContext,
        effects: Vec<Effect>,
    },
    /// Accepted, but nothing to do (a repeated cancel).
    Unchanged,
}

/// The action a request id is recorded for (`operate` is called with
/// operator events only).
fn action_name(event: &Event) -> &'static str {
    match event {
        Event::Retry => "retry",
        Event::Cancel { .. } => "cancel",
        Event::Start | Event::Timeout | Event::Outcome { .. } => "event",
    }
}

/// Apply an operator's event to a saga in one transaction: record the
/// request id (if any; a repeat does nothing), lock the saga, apply, persist
/// and append history. Nothing is written when the machine refuses.
pub async fn operate(pool: &Pool, op: Operation<'_>) -> Result<Operated, Error> {
    let action = action_name(op.event);
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(locked) = lock_saga(&tx, op.saga_id).await? else {
        tx.rollback().await?;
        return Ok(Operated::UnknownSaga);
    };
    if let Some(request_id) = op.request_id {
        // A concurrent repeat on this saga waited for the row lock above; one
        // naming another saga waits on this insert until the first commits
        // (then sees its row) or rolls back.
        let fresh = tx
            .execute(
                "INSERT INTO operator_requests (request_id, saga_id, action) VALUES ($1, $2, $3)
                 ON CONFLICT (request_id) DO NOTHING",
                &[&request_id, &op.saga_id, &action],
            )
            .await?;
        if fresh == 0 {
            let row = tx
                .query_one(
                    "SELECT saga_id, action FROM operator_requests WHERE request_id = $1",
                    &[&request_id],
                )
                .await?;
            let (saga_id, stored): (Uuid, String) = (row.get(0), row.get(1));
            tx.rollback().await?;
            return Ok(if (saga_id, stored.as_str()) == (op.saga_id, action) {
                Operated::Repeated
            } else {
                Operated::RequestIdReused {
                    saga_id,
                    action: stored,
                }
            });
        }
    }
    let operated =
        match apply_locked(&tx, locked, op.event, op.now, op.annotation.as_deref()).await? {
            Err(e) => {
                // Not applied: forget the request id too, so a retry after the
                // cause is fixed can use it.
                tx.rollback().await?;
                return Ok(Operated::Refused(e));
            }
            Ok(Persisted::Changed { ctx, effects, .. }) => Operated::Changed { ctx, effects },
            Ok(Persisted::Unchanged) => Operated::Unchanged,
        };
    tx.commit().await?;
    Ok(operated)
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
