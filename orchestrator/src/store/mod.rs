//! The orchestrator's Postgres persistence: saga rows, their history and the
//! record of applied events.
//!
//! Every state change happens in one transaction that locks the saga row
//! (`FOR UPDATE`), so concurrent orchestrator instances serialise on a saga and
//! none advances it twice; `processed_events` (primary key = event id) makes a
//! redelivered event a no-op. Each change appends a history row with the next
//! sequence number (= the row's `version`) and `NOTIFY sagaflow_saga` with the
//! saga id, so any instance can stream any saga live.
//!
//! Time comes from one clock, the database's: each transaction reads
//! `clock_timestamp()` with the saga row and hands it to the state machine,
//! and due timers are those whose wake-up (`saga_wakeups.due`) has passed by that clock. So
//! instances whose own clocks disagree never fire each other's deadlines
//! early.
//!
//! One bad saga never stops the others: a row whose state cannot be read, or
//! whose timer the state machine rejects, is suspended (`SUSPENDED`, with the
//! reason and a history entry) in its own transaction; a row whose
//! definition version this build lacks is left for an instance that has it.
//!
//! Layout:
//! - [`place`](place()): insert a new saga (idempotency key).
//! - `locked`: load and lock one saga, apply an event, suspend.
//! - `timers`: due timers, one saga per transaction; the resume scan.
//! - `operate`: operator actions, with request ids.

mod locked;
mod operate;
mod place;
mod timers;

use chrono::{DateTime, TimeZone, Utc};
use deadpool_postgres::GenericClient;
use sagaflow_common::db::Migration;
use uuid::Uuid;

use crate::saga::{self, Effect, Millis, SagaState, Status};

pub use locked::{Applied, applied_among, apply_event, suspend};
pub use operate::{Operated, Operation, operate};
pub use place::{Existing, NewSaga, Placed, find_by_key, place};
pub use timers::{Fired, InFlight, count_due_unknown, due_sagas, fire_timer, in_flight_page};

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

/// Keeps saga updates HOT (heap-only: no index is rewritten) on the common
/// transition, a step that succeeds while the saga stays `RUNNING`. A saga
/// row then changes only in columns no index covers; its deadline, which
/// changes with every step, moves to `saga_wakeups`, a narrow table whose
/// index the timer scan reads. `fillfactor` leaves room on each page for the
/// new row versions. Applied after the other migrations (version 70).
pub const WAKEUP_MIGRATIONS: &[Migration] = &[Migration {
    version: 70,
    name: "saga wakeups",
    sql: r#"
CREATE TABLE saga_wakeups (
    saga_id uuid PRIMARY KEY REFERENCES sagas (saga_id) ON DELETE CASCADE,
    due     timestamptz NOT NULL
);
CREATE INDEX saga_wakeups_due_idx ON saga_wakeups (due);
INSERT INTO saga_wakeups (saga_id, due)
    SELECT saga_id, next_wakeup FROM sagas WHERE next_wakeup IS NOT NULL;
DROP INDEX sagas_wakeup_idx;
ALTER TABLE sagas DROP COLUMN next_wakeup;
ALTER TABLE sagas SET (fillfactor = 70);
ALTER TABLE saga_wakeups SET (fillfactor = 70);
"#,
}];

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A statement or commit failed (the message keeps the server's cause).
    #[error("database: {}", sagaflow_common::error::chain(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("database unavailable: {}", sagaflow_common::error::chain(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A stored row this code cannot make sense of.
    #[error("corrupt saga {saga_id}: {reason}")]
    Corrupt { saga_id: Uuid, reason: String },
    /// The saga runs a definition version this instance does not have (a
    /// rolling deploy): another instance must handle it.
    #[error("saga {saga_id} runs {saga_type} v{version}, which this instance does not have")]
    UnknownDefinition {
        saga_id: Uuid,
        saga_type: String,
        version: u32,
    },
}

impl Error {
    /// Worth retrying: the database may come back.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Db(_) | Error::Pool(_) => true,
            Error::Corrupt { .. } | Error::UnknownDefinition { .. } => false,
        }
    }
}

/// What the driver needs to carry out effects for a saga.
#[derive(Debug, Clone)]
pub struct SagaContext {
    pub saga_id: Uuid,
    pub saga_type: String,
    pub definition_version: u32,
    pub input: Vec<u8>,
    pub traceparent: Option<String>,
    /// When the saga was placed, on the database's clock (its duration,
    /// once it finishes, is measured from it).
    pub created_at: Millis,
}

/// Effects to carry out now that the change they follow is committed, with
/// the database time the change was made at (deadlines are on that clock).
#[derive(Debug, Clone)]
pub struct Committed {
    pub ctx: SagaContext,
    pub state: SagaState,
    pub effects: Vec<Effect>,
    pub now: Millis,
}

/// The `traceparent` of the saga's root span (`None`: no such saga, or it
/// was placed without one).
pub async fn traceparent_of(
    pool: &deadpool_postgres::Pool,
    saga_id: Uuid,
) -> Result<Option<String>, Error> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT traceparent FROM sagas WHERE saga_id = $1",
            &[&saga_id],
        )
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}

/// The database's clock, in epoch milliseconds, as a SQL expression.
pub(crate) const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A machine time as a timestamp; out-of-range times are clamped (to the
/// epoch or to [`saga::LATEST`]), never replaced by "now", so a
/// corrupt deadline cannot make a timer fire over and over.
pub fn to_time(ms: Millis) -> DateTime<Utc> {
    let ms = ms.clamp(0, saga::LATEST);
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The names this build can load, as `"type:version"` (for SQL filters).
pub(crate) fn known_definitions() -> Vec<String> {
    crate::definitions::registry()
        .iter()
        .map(|d| format!("{}:{}", d.saga_type, d.version))
        .collect()
}

async fn append_history(
    tx: &impl GenericClient,
    saga_id: Uuid,
    seq: i64,
    kind: &str,
    status: Status,
    detail: &str,
) -> Result<(), Error> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO saga_history (saga_id, seq, kind, status, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    tx.execute(&insert, &[&saga_id, &seq, &kind, &status.as_str(), &detail])
        .await?;
    let notify = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
    tx.execute(&notify, &[&HISTORY_CHANNEL, &saga_id.to_string()])
        .await?;
    Ok(())
}

/// Set (or, with `None`, clear) a saga's wake-up.
async fn set_wakeup(
    tx: &impl GenericClient,
    saga_id: Uuid,
    due: Option<DateTime<Utc>>,
) -> Result<(), Error> {
    let statement = tx.prepare_cached(SET_WAKEUP).await?;
    tx.execute(&statement, &[&saga_id, &due]).await?;
    Ok(())
}

/// `$1` saga id, `$2` due time or NULL (clears it), as one statement.
const SET_WAKEUP: &str = "
    WITH upsert AS (
        INSERT INTO saga_wakeups (saga_id, due)
        SELECT $1, $2::timestamptz WHERE $2::timestamptz IS NOT NULL
        ON CONFLICT (saga_id) DO UPDATE SET due = EXCLUDED.due
    )
    DELETE FROM saga_wakeups WHERE saga_id = $1 AND $2::timestamptz IS NULL";

fn parse_status(saga_id: Uuid, s: &str) -> Result<Status, Error> {
    Status::parse(s).ok_or_else(|| Error::Corrupt {
        saga_id,
        reason: format!("unknown status {s:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_times_are_clamped_not_replaced_by_now() {
        assert_eq!(to_time(i64::MIN).timestamp_millis(), 0);
        assert_eq!(to_time(i64::MAX).timestamp_millis(), saga::LATEST);
        assert_eq!(
            to_time(1_700_000_000_123).timestamp_millis(),
            1_700_000_000_123
        );
    }
}
