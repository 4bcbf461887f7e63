//! Persisted deadlines: which sagas are due, firing one saga's timer in its
//! own transaction, and the scan of sagas in flight at start-up.
//!
//! Due means its `saga_wakeups.due` has passed by the database's clock. Only sagas
//! whose definition version this build has are picked: one this instance
//! cannot run is left for an instance that can (counted by
//! [`count_due_unknown`]), and never blocks the sagas behind it.

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::locked::{Loaded, Persisted, Row, apply_locked, columns, load, suspend_row};
use super::{Committed, Error, SagaContext, known_definitions, set_wakeup, to_time};
use crate::saga::{Event, SagaState, Status};

/// Up to `limit` due sagas this build can run, most overdue first.
pub async fn due_sagas(pool: &Pool, limit: i64) -> Result<Vec<Uuid>, Error> {
    let client = pool.get().await?;
    let select = client
        .prepare_cached(
            "SELECT w.saga_id FROM saga_wakeups w JOIN sagas s USING (saga_id)
             WHERE w.due <= clock_timestamp()
               AND s.saga_type || ':' || s.definition_version = ANY($1)
             ORDER BY w.due LIMIT $2",
        )
        .await?;
    Ok(client
        .query(&select, &[&known_definitions(), &limit])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Due sagas whose definition version this build lacks, by `type:version`.
pub async fn count_due_unknown(pool: &Pool) -> Result<Vec<(String, i64)>, Error> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT s.saga_type || ':' || s.definition_version, count(*)
             FROM saga_wakeups w JOIN sagas s USING (saga_id)
             WHERE w.due <= clock_timestamp()
               AND NOT s.saga_type || ':' || s.definition_version = ANY($1)
             GROUP BY 1 ORDER BY 1",
            &[&known_definitions()],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What firing one saga's timer did.
pub enum Fired {
    /// A command is re-sent, or the saga gave up on one.
    Changed(Box<Committed>),
    /// Not due (any more), or another instance holds it: nothing done.
    NotDue,
    /// Due, but nothing to do: its wake-up is moved to its state's deadline.
    Unchanged,
    /// It could not be fired and was suspended, with this reason.
    Suspended { reason: String },
    /// Its definition version is not in this build: left alone.
    UnknownDefinition,
}

/// Fire the timer of one saga, in its own transaction, skipping it if
/// another transaction holds it (it is then either no longer due, or will
/// be picked up next round).
pub async fn fire_timer(pool: &Pool, saga_id: Uuid) -> Result<Fired, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let select = tx
        .prepare_cached(&format!(
            "SELECT {} FROM sagas
             WHERE saga_id = $1
               AND EXISTS (SELECT 1 FROM saga_wakeups w
                           WHERE w.saga_id = $1 AND w.due <= clock_timestamp())
             FOR UPDATE OF sagas SKIP LOCKED",
            columns()
        ))
        .await?;
    let Some(row) = tx
        .query_opt(&select, &[&saga_id])
        .await?
        .map(|r| Row::read(&r))
    else {
        tx.commit().await?;
        return Ok(Fired::NotDue);
    };
    let version = row.version;
    let fired = match load(row) {
        Loaded::UnknownDefinition(_) => Fired::UnknownDefinition,
        Loaded::Unreadable { reason } => {
            suspend_row(&tx, saga_id, version, &reason).await?;
            Fired::Suspended { reason }
        }
        Loaded::Ok(locked) => {
            let now = locked.now;
            let deadline = locked.state.deadline;
            match apply_locked(&tx, *locked, &Event::Timeout, None).await? {
                Ok(Persisted::Changed(c)) => Fired::Changed(c),
                Ok(Persisted::Unchanged) => {
                    // The column and the state disagree (or the state has
                    // nothing in flight): follow the state, so the timer
                    // does not fire again at once.
                    let next = deadline.filter(|d| *d > now).map(to_time);
                    set_wakeup(&tx, saga_id, next).await?;
                    Fired::Unchanged
                }
                Err(e) => {
                    let reason = format!("its timer was rejected: {e}");
                    suspend_row(&tx, saga_id, version, &reason).await?;
                    Fired::Suspended { reason }
                }
            }
        }
    };
    tx.commit().await?;
    Ok(fired)
}

/// One row of the resume scan.
pub enum InFlight {
    /// Its in-flight command is to be sent again.
    Ready(SagaContext, Box<SagaState>),
    /// Its state cannot be read: suspend it.
    Unreadable { saga_id: Uuid, reason: String },
    /// Its definition version is not in this build: leave it.
    UnknownDefinition { saga_id: Uuid },
}

/// A page of sagas in flight (`RUNNING`, `COMPENSATING`) after `after`, by
/// saga id, each judged on its own.
pub async fn in_flight_page(pool: &Pool, after: Uuid, limit: i64) -> Result<Vec<InFlight>, Error> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {} FROM sagas
                 WHERE status IN ($1, $2) AND saga_id > $3
                 ORDER BY saga_id LIMIT $4",
                columns()
            ),
            &[
                &Status::Running.as_str(),
                &Status::Compensating.as_str(),
                &after,
                &limit,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let row = Row::read(r);
            let saga_id = row.ctx.saga_id;
            match load(row) {
                Loaded::Ok(locked) => InFlight::Ready(locked.ctx, Box::new(locked.state)),
                Loaded::Unreadable { reason } => InFlight::Unreadable { saga_id, reason },
                Loaded::UnknownDefinition(_) => InFlight::UnknownDefinition { saga_id },
            }
        })
        .collect())
}
