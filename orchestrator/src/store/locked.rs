//! One saga: read and lock its row, judge whether its state can be trusted,
//! apply an event to it, or suspend it.

use deadpool_postgres::{GenericClient, Pool};
use uuid::Uuid;

use super::{
    Committed, DB_NOW, Error, SagaContext, append_history, parse_status, set_wakeup, to_time,
};
use crate::definitions;
use crate::saga::{self, Event, Millis, Note, SagaState, Status};

/// The columns [`Row::read`] expects, in order, the database clock among
/// them.
pub(super) fn columns() -> String {
    format!(
        "saga_id, saga_type, definition_version, input, traceparent, state, version, status, reason, {DB_NOW}, {CREATED_AT}"
    )
}

/// A saga row's `created_at` in epoch milliseconds, as a SQL expression.
const CREATED_AT: &str = "(extract(epoch from created_at) * 1000)::bigint";

/// A saga row as read, before its state is trusted.
pub(super) struct Row {
    pub ctx: SagaContext,
    pub state: serde_json::Value,
    pub version: i64,
    pub status: String,
    pub reason: Option<String>,
    /// The database's clock when the row was read (locked).
    pub now: Millis,
}

impl Row {
    pub fn read(row: &tokio_postgres::Row) -> Row {
        Row {
            ctx: SagaContext {
                saga_id: row.get(0),
                saga_type: row.get(1),
                definition_version: row.get::<_, i32>(2) as u32,
                input: row.get(3),
                traceparent: row.get(4),
                created_at: row.get(10),
            },
            state: row.get(5),
            version: row.get(6),
            status: row.get(7),
            reason: row.get(8),
            now: row.get(9),
        }
    }
}

/// A saga whose state was read and matches a definition this build has.
pub(super) struct Locked {
    pub ctx: SagaContext,
    pub state: SagaState,
    pub version: i64,
    pub definition: std::sync::Arc<saga::Definition>,
    pub now: Millis,
}

/// What a row turned out to be.
pub(super) enum Loaded {
    Ok(Box<Locked>),
    /// Its state cannot be read (or its status column is unknown): the
    /// reason, for the suspension.
    Unreadable {
        reason: String,
    },
    /// A definition version this build does not have.
    UnknownDefinition(Error),
}

/// Judge a row. A row suspended at row level (its state could not be read
/// then) whose state reads now is handed to the machine as `Suspended`, so
/// an operator's retry resumes it.
pub(super) fn load(row: Row) -> Loaded {
    let ctx = row.ctx;
    let Some(definition) = definitions::find(&ctx.saga_type, ctx.definition_version) else {
        return Loaded::UnknownDefinition(Error::UnknownDefinition {
            saga_id: ctx.saga_id,
            saga_type: ctx.saga_type,
            version: ctx.definition_version,
        });
    };
    let column = match parse_status(ctx.saga_id, &row.status) {
        Ok(s) => s,
        Err(e) => {
            return Loaded::Unreadable {
                reason: e.to_string(),
            };
        }
    };
    let mut state: SagaState = match serde_json::from_value(row.state) {
        Ok(s) => s,
        Err(e) => {
            return Loaded::Unreadable {
                reason: format!("its stored state cannot be read: {e}"),
            };
        }
    };
    if column == Status::Suspended && state.status != Status::Suspended {
        let why = row.reason.unwrap_or_default();
        let why = why.strip_prefix("suspended: ").unwrap_or(&why);
        if let Ok(t) = saga::apply(
            &definition,
            &state,
            &Event::Suspend { reason: why.into() },
            row.now,
        ) {
            state = t.state;
        }
    }
    Loaded::Ok(Box::new(Locked {
        ctx,
        state,
        version: row.version,
        definition,
        now: row.now,
    }))
}

/// The statement that reads and locks one saga row (`$1`).
async fn lock_statement(tx: &impl GenericClient) -> Result<tokio_postgres::Statement, Error> {
    Ok(tx
        .prepare_cached(&format!(
            "SELECT {} FROM sagas WHERE saga_id = $1 FOR UPDATE",
            columns()
        ))
        .await?)
}

/// Lock the saga's row until the transaction ends.
pub(super) async fn lock(tx: &impl GenericClient, saga_id: Uuid) -> Result<Option<Row>, Error> {
    let select = lock_statement(tx).await?;
    Ok(tx
        .query_opt(&select, &[&saga_id])
        .await?
        .map(|r| Row::read(&r)))
}

/// What [`apply_locked`] did.
pub(super) enum Persisted {
    Changed(Box<Committed>),
    /// The machine changed nothing (duplicate, late or stale).
    Unchanged,
}

/// Apply `event` to a locked saga inside `tx` and persist the result;
/// `annotation` is appended to the history entry's detail.
pub(super) async fn apply_locked(
    tx: &impl GenericClient,
    locked: Locked,
    event: &Event,
    annotation: Option<&str>,
) -> Result<Result<Persisted, saga::Error>, Error> {
    let t = match saga::apply(&locked.definition, &locked.state, event, locked.now) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    let Some(note) = t.note else {
        return Ok(Ok(Persisted::Unchanged));
    };
    let version = locked.version + 1;
    let state_json = serde_json::to_value(&t.state).expect("state serialises");
    let Note { kind, detail } = note;
    let detail = match annotation {
        Some(a) => format!("{detail}; {a}"),
        None => detail,
    };
    // One statement: the saga row (HOT: no indexed column changes unless
    // the status does), its wake-up, its history entry and the NOTIFY.
    let transition = tx
        .prepare_cached(
            "WITH saga AS (
                 UPDATE sagas SET state = $2, status = $3, version = $4, reason = $5,
                                  updated_at = now()
                 WHERE saga_id = $1
             ), upsert AS (
                 INSERT INTO saga_wakeups (saga_id, due)
                 SELECT $1, $6::timestamptz WHERE $6::timestamptz IS NOT NULL
                 ON CONFLICT (saga_id) DO UPDATE SET due = EXCLUDED.due
             ), clear AS (
                 DELETE FROM saga_wakeups WHERE saga_id = $1 AND $6::timestamptz IS NULL
             ), history AS (
                 INSERT INTO saga_history (saga_id, seq, kind, status, detail)
                 VALUES ($1, $4, $7, $3, $8)
             )
             SELECT pg_notify($9, $1::text)",
        )
        .await?;
    tx.execute(
        &transition,
        &[
            &locked.ctx.saga_id,
            &state_json,
            &t.state.status.as_str(),
            &version,
            &t.state.reason,
            &t.state.deadline.map(to_time),
            &kind,
            &detail,
            &super::HISTORY_CHANNEL,
        ],
    )
    .await?;
    Ok(Ok(Persisted::Changed(Box::new(Committed {
        ctx: locked.ctx,
        state: t.state,
        effects: t.effects,
        now: locked.now,
    }))))
}

/// Suspend a saga at row level: its status column says `SUSPENDED` with the
/// reason, no timer fires, and its stored state is left as it is for
/// whoever repairs it.
pub(super) async fn suspend_row(
    tx: &impl GenericClient,
    row_saga: Uuid,
    version: i64,
    reason: &str,
) -> Result<(), Error> {
    let why = format!("suspended: {reason}");
    let version = version + 1;
    tx.execute(
        "UPDATE sagas SET status = 'SUSPENDED', reason = $2, version = $3, updated_at = now()
         WHERE saga_id = $1",
        &[&row_saga, &why, &version],
    )
    .await?;
    set_wakeup(tx, row_saga, None).await?;
    append_history(tx, row_saga, version, "suspended", Status::Suspended, &why).await
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
    /// The saga's stored state cannot be read: it is suspended (now, or it
    /// was already) and the event is not recorded. Its command is sent again
    /// when an operator resumes it, and answered again.
    Suspended { reason: String },
    /// Applied; its effects are to be carried out now that it is committed.
    Changed(Box<Committed>),
    /// Applied, but nothing changed (late or duplicate in the machine's view).
    Unchanged,
}

/// Which of `event_ids` were applied already: one read for a batch of
/// deliveries, so copies of applied events are acked without a transaction.
/// Rows of `processed_events` are only ever inserted (and pruned long after
/// any copy can come), so an id found here is final.
pub async fn applied_among(
    pool: &Pool,
    event_ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, Error> {
    if event_ids.is_empty() {
        return Ok(Default::default());
    }
    let client = pool.get().await?;
    let seen = client
        .prepare_cached("SELECT event_id FROM processed_events WHERE event_id = ANY($1)")
        .await?;
    Ok(client
        .query(&seen, &[&event_ids])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Apply an outcome event exactly once (by event id), in one transaction
/// that records the event id under the saga's lock. Copies of applied
/// events are best told apart before, a batch at a time, with
/// [`applied_among`]; this tells them anyway.
pub async fn apply_event(
    pool: &Pool,
    event_id: Uuid,
    saga_id: Uuid,
    event: &Event,
) -> Result<Applied, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let record = tx
        .prepare_cached(
            "INSERT INTO processed_events (event_id, saga_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .await?;
    // Lock the saga and record the event id in one round trip (pipelined;
    // the server runs them in this order, so the record is made under the
    // saga's lock). What follows undoes the record where the event is not
    // to count as applied.
    // Both statements are prepared before either is sent, so the lock is
    // always sent first: two copies of one event never take the two locks
    // in opposite orders.
    let select = lock_statement(&tx).await?;
    let key: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&saga_id];
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&event_id, &saga_id];
    let (row, recorded) = futures::join!(tx.query_opt(&select, &key), tx.execute(&record, &params));
    let (row, recorded) = (row?.map(|r| Row::read(&r)), recorded?);
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(Applied::UnknownSaga);
    };
    if recorded == 0 {
        tx.rollback().await?;
        return Ok(Applied::Duplicate);
    }
    let (version, status) = (row.version, row.status.clone());
    let locked = match load(row) {
        Loaded::Ok(locked) => locked,
        Loaded::Unreadable { reason } => {
            if status == Status::Suspended.as_str() {
                tx.rollback().await?;
            } else {
                // The suspension stands; the event is not recorded.
                let forget = tx
                    .prepare_cached("DELETE FROM processed_events WHERE event_id = $1")
                    .await?;
                tx.execute(&forget, &[&event_id]).await?;
                suspend_row(&tx, saga_id, version, &reason).await?;
                tx.commit().await?;
            }
            return Ok(Applied::Suspended { reason });
        }
        Loaded::UnknownDefinition(e) => {
            tx.rollback().await?;
            return Err(e);
        }
    };
    match apply_locked(&tx, *locked, event, None).await? {
        Ok(Persisted::Changed(c)) => {
            tx.commit().await?;
            Ok(Applied::Changed(c))
        }
        Ok(Persisted::Unchanged) => {
            tx.commit().await?;
            Ok(Applied::Unchanged)
        }
        Err(e) => {
            tx.rollback().await?;
            Ok(Applied::Rejected(e))
        }
    }
}

/// Suspend a saga in flight, in its own transaction: through the state
/// machine when its state can be read, at row level otherwise. `false`
/// when there was nothing to suspend (finished, already suspended, gone).
pub async fn suspend(pool: &Pool, saga_id: Uuid, reason: &str) -> Result<bool, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(row) = lock(&tx, saga_id).await? else {
        return Ok(false);
    };
    let (version, status) = (row.version, row.status.clone());
    let suspended = match load(row) {
        Loaded::Ok(locked) => {
            let event = Event::Suspend {
                reason: reason.to_owned(),
            };
            match apply_locked(&tx, *locked, &event, None).await? {
                Ok(Persisted::Changed(_)) => true,
                Ok(Persisted::Unchanged) => false,
                Err(e) => {
                    suspend_row(&tx, saga_id, version, &format!("{reason} ({e})")).await?;
                    true
                }
            }
        }
        Loaded::Unreadable { reason: why } if status != Status::Suspended.as_str() => {
            suspend_row(&tx, saga_id, version, &format!("{reason}: {why}")).await?;
            true
        }
        Loaded::Unreadable { .. } | Loaded::UnknownDefinition(_) => false,
    };
    tx.commit().await?;
    Ok(suspended)
}
