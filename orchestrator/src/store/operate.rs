//! Operator actions (`RetrySaga`, `CancelSaga`): state machine events applied
//! like any other, in one transaction that also records the client's
//! request id (if any), so a repeat is a no-op.

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::locked::{Loaded, Persisted, apply_locked, load, lock};
use super::{Committed, Error};
use crate::saga::{self, Event};

/// An operator's action on one saga.
pub struct Operation<'a> {
    pub saga_id: Uuid,
    /// [`Event::Retry`] or [`Event::Cancel`].
    pub event: &'a Event,
    /// The client's idempotency key, if it sent one.
    pub request_id: Option<&'a str>,
    /// Appended to the history entry ("operator: payment restored").
    pub annotation: Option<String>,
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
    /// The saga's stored state cannot be read (it is, or will be,
    /// suspended): nothing can act on it until it is repaired.
    Unreadable { reason: String },
    /// The saga runs a definition version this instance does not have.
    UnknownDefinition(Error),
    /// Applied; its effects are to be carried out now that it is committed.
    Changed(Box<Committed>),
    /// Accepted, but nothing to do (a repeated cancel).
    Unchanged,
}

/// The action a request id is recorded for (`operate` is called with
/// operator events only).
fn action_name(event: &Event) -> &'static str {
    match event {
        Event::Retry => "retry",
        Event::Cancel { .. } => "cancel",
        Event::Start | Event::Timeout | Event::Outcome { .. } | Event::Suspend { .. } => "event",
    }
}

/// Apply an operator's event to a saga in one transaction: record the
/// request id (if any; a repeat does nothing), lock the saga, apply, persist
/// and append history. Nothing is written when the machine refuses.
pub async fn operate(pool: &Pool, op: Operation<'_>) -> Result<Operated, Error> {
    let action = action_name(op.event);
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(row) = lock(&tx, op.saga_id).await? else {
        tx.rollback().await?;
        return Ok(Operated::UnknownSaga);
    };
    let locked = match load(row) {
        Loaded::Ok(locked) => locked,
        Loaded::Unreadable { reason } => {
            tx.rollback().await?;
            return Ok(Operated::Unreadable { reason });
        }
        Loaded::UnknownDefinition(e) => {
            tx.rollback().await?;
            return Ok(Operated::UnknownDefinition(e));
        }
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
    let operated = match apply_locked(&tx, *locked, op.event, op.annotation.as_deref()).await? {
        Err(e) => {
            // Not applied: forget the request id too, so a retry after the
            // cause is fixed can use it.
            tx.rollback().await?;
            return Ok(Operated::Refused(e));
        }
        Ok(Persisted::Changed(c)) => Operated::Changed(c),
        Ok(Persisted::Unchanged) => Operated::Unchanged,
    };
    tx.commit().await?;
    Ok(operated)
}
