//! Retention: what the orchestrator's tables may forget, and when.
//!
//! - `processed_events` (the dedupe of event ids) keeps an id for
//!   [`Retention::dedupe`]. A copy of an event can reach the orchestrator
//!   while Pub/Sub still holds it ([`Retention::message`]) or while it sits
//!   in `dead_letters` waiting for a re-drive ([`Retention::dead_letters`]);
//!   so `dedupe` must be at least both ([`Retention::check`]). An id
//!   forgotten after that is harmless anyway for a finished saga (the state
//!   machine ignores an outcome it already has).
//! - `saga_history` (and `operator_requests`) of a saga finished
//!   (`COMPLETED`, `COMPENSATED`) longer ago than [`Retention::history`] is
//!   deleted; the saga row stays (its idempotency key keeps working). Paused,
//!   suspended and running sagas keep all their history.
//! - `dead_letters` older than [`Retention::dead_letters`] are deleted.
//!
//! Deletes run in batches, so no sweep holds locks for long, and any number
//! of instances may sweep at once.

use std::time::Duration;

use deadpool_postgres::Pool;
use sagaflow_common::db::Migration;
use tokio_util::sync::CancellationToken;

use crate::store;

/// Indexes the sweeps walk (versions 60+ belong to retention; they run
/// after the dead letters' 50+, whose table they index).
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 60,
    name: "retention indexes",
    sql: r#"
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at);
CREATE INDEX saga_history_at_idx ON saga_history (at);
CREATE INDEX dead_letters_dead_at_idx ON dead_letters (dead_at);
"#,
}];

/// Rows deleted per statement.
const BATCH: i64 = 5_000;

/// How long each kind of row is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long Pub/Sub may still deliver a message (the subscription's
    /// message retention, 7 days by default).
    pub message: Duration,
    pub dead_letters: Duration,
    pub dedupe: Duration,
    pub history: Duration,
    /// Time between sweeps.
    pub interval: Duration,
}

impl Retention {
    /// The rule between the settings: an event id is remembered for as long
    /// as a copy of the event can still arrive.
    pub fn check(&self) -> anyhow::Result<()> {
        let needed = self.message.max(self.dead_letters);
        anyhow::ensure!(
            self.dedupe >= needed,
            "SAGAFLOW_DEDUPE_RETENTION_SECS={} is invalid: it must be at least SAGAFLOW_MESSAGE_RETENTION_SECS ({}) and SAGAFLOW_DEAD_LETTER_RETENTION_SECS ({}), as a copy of an event can arrive that late",
            self.dedupe.as_secs(),
            self.message.as_secs(),
            self.dead_letters.as_secs()
        );
        Ok(())
    }
}

/// What one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub processed_events: u64,
    pub history: u64,
    pub operator_requests: u64,
    pub dead_letters: u64,
}

/// Delete, in batches, everything older than its retention.
pub async fn sweep(pool: &Pool, r: &Retention) -> Result<Swept, store::Error> {
    let client = pool.get().await?;
    let secs = |d: Duration| d.as_secs_f64();
    let mut swept = Swept::default();
    let batches = [
        (
            "DELETE FROM processed_events WHERE event_id IN (
                 SELECT event_id FROM processed_events
                 WHERE processed_at < now() - $1 * interval '1 second' LIMIT $2)",
            secs(r.dedupe),
            &mut swept.processed_events,
        ),
        (
            "DELETE FROM saga_history WHERE (saga_id, seq) IN (
                 SELECT h.saga_id, h.seq FROM saga_history h JOIN sagas s USING (saga_id)
                 WHERE h.at < now() - $1 * interval '1 second'
                   AND s.status IN ('COMPLETED', 'COMPENSATED')
                   AND s.updated_at < now() - $1 * interval '1 second'
                 LIMIT $2)",
            secs(r.history),
            &mut swept.history,
        ),
        (
            "DELETE FROM operator_requests WHERE request_id IN (
                 SELECT o.request_id FROM operator_requests o JOIN sagas s USING (saga_id)
                 WHERE o.applied_at < now() - $1 * interval '1 second'
                   AND s.status IN ('COMPLETED', 'COMPENSATED')
                   AND s.updated_at < now() - $1 * interval '1 second'
                 LIMIT $2)",
            secs(r.history),
            &mut swept.operator_requests,
        ),
        (
            "DELETE FROM dead_letters WHERE id IN (
                 SELECT id FROM dead_letters
                 WHERE dead_at < now() - $1 * interval '1 second' LIMIT $2)",
            secs(r.dead_letters),
            &mut swept.dead_letters,
        ),
    ];
    for (sql, age, count) in batches {
        let delete = client.prepare_cached(sql).await?;
        loop {
            let n = client.execute(&delete, &[&age, &BATCH]).await?;
            *count += n;
            if (n as i64) < BATCH {
                break;
            }
        }
    }
    Ok(swept)
}

/// Sweep every `interval` until shutdown.
pub async fn run(pool: Pool, retention: Retention, shutdown: CancellationToken) {
    loop {
        match sweep(&pool, &retention).await {
            Ok(swept) if swept != Swept::default() => {
                tracing::info!(?swept, "retention: old rows deleted");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * 86_400)
    }

    fn retention(dedupe: u64) -> Retention {
        Retention {
            message: days(7),
            dead_letters: days(14),
            dedupe: days(dedupe),
            history: days(30),
            interval: Duration::from_secs(3600),
        }
    }

    #[test]
    fn event_ids_outlive_every_copy_that_can_still_arrive() {
        assert!(retention(15).check().is_ok());
        assert!(retention(14).check().is_ok());
        let e = retention(13).check().unwrap_err().to_string();
        assert!(e.starts_with("SAGAFLOW_DEDUPE_RETENTION_SECS="), "{e}");
    }
}
