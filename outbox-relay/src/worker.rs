//! One worker per database: the claim loop, plus its LISTEN connection and
//! its cleanup task.
//!
//! The claim loop runs batches back to back while they come back full, then
//! waits for a `NOTIFY` or the poll interval. It never exits on an error:
//! database errors (unreachable, table not created yet) back off and retry;
//! a round where every publish failed (Pub/Sub unreachable) backs off too.
//! Rows whose publish failed are skipped by this worker for a while (growing
//! with their attempts) so one poison row cannot stall or hot-loop the rest.
//! Except when the topic was missing and has just been re-created (an
//! emulator restart): those rows are retried at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use deadpool_postgres::Pool;
use sagaflow_common::pubsub::EventPublisher;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, jitter};
use crate::batch::{self, Failed};
use crate::metrics::WorkerMetrics;
use crate::topic::Topic;
use crate::{cleanup, listener};

/// First delay before this worker retries a row whose publish failed.
const ROW_RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Longest delay before retrying a failed row.
const ROW_RETRY_MAX: Duration = Duration::from_secs(60);

/// Relays one database's outbox.
pub(crate) struct Worker {
    /// Connection string (for the LISTEN connection).
    pub url: String,
    /// Short name for logs.
    pub label: String,
    /// Connections for claiming and cleanup.
    pub pool: Pool,
    /// Shared by every worker of the relay.
    pub publisher: Arc<EventPublisher>,
    /// Re-creates the topic when publishes find it missing (emulator only).
    pub topic: Arc<Topic>,
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub retention: Duration,
    pub cleanup_interval: Duration,
    /// Publish with the saga id as ordering key.
    pub ordering_key: bool,
    /// Whether the LISTEN connection is up (for readiness).
    pub listening: Arc<AtomicBool>,
    /// This database's counters.
    pub metrics: WorkerMetrics,
}

/// What to do before the next round.
enum Wait {
    /// Nothing left: wait for a notification or the poll interval.
    Idle,
    /// A database error: retry after the delay, or sooner on a notification
    /// (an insert proves the database and table are back).
    Retry(Duration),
    /// Every publish failed: give Pub/Sub the delay to recover.
    Backoff(Duration),
}

impl Worker {
    /// Relay until `shutdown`; the batch in hand is finished first.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let helpers = CancellationToken::new();
        let listener = tokio::spawn(listener::listen(
            self.url.clone(),
            self.label.clone(),
            wake.clone(),
            self.listening.clone(),
            helpers.clone(),
        ));
        let cleanup = tokio::spawn(cleanup::run(
            self.pool.clone(),
            self.label.clone(),
            self.retention,
            self.cleanup_interval,
            helpers.clone(),
        ));
        tracing::info!(db = %self.label, "relaying outbox");
        self.claim_loop(&wake, &shutdown).await;
        helpers.cancel();
        for task in [listener, cleanup] {
            if let Err(e) = task.await {
                tracing::error!(db = %self.label, error = %e, "relay helper task failed");
            }
        }
        tracing::info!(db = %self.label, "stopped relaying outbox");
    }

    async fn claim_loop(&self, wake: &Notify, shutdown: &CancellationToken) {
        let mut db_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut publish_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut deferred = Deferred::default();
        while !shutdown.is_cancelled() {
            let skip = deferred.active();
            let outcome = batch::relay_batch(
                &self.pool,
                &self.publisher,
                self.batch_size,
                self.ordering_key,
                &skip,
                &self.metrics,
                shutdown,
            )
            .await;
            let wait = match outcome {
                Ok(o) => {
                    db_backoff.reset();
                    // The topic is gone (emulator restart): re-create it and
                    // retry those rows at once rather than deferring them.
                    let recreated = o.failed.iter().any(|f| f.topic_missing)
                        && tokio::select! {
                            r = self.topic.recreate() => r,
                            () = shutdown.cancelled() => false,
                        };
                    for f in &o.failed {
                        if !(recreated && f.topic_missing) {
                            deferred.defer(f);
                        }
                    }
                    if recreated {
                        continue;
                    }
                    if o.sent == 0 && !o.failed.is_empty() {
                        Wait::Backoff(publish_backoff.next_delay())
                    } else {
                        publish_backoff.reset();
                        if o.claimed as i64 >= self.batch_size {
                            continue;
                        }
                        Wait::Idle
                    }
                }
                Err(e) => {
                    self.metrics.database_errors.inc();
                    let delay = db_backoff.next_delay();
                    let retry_in_ms = delay.as_millis() as u64;
                    if is_missing_table(&e) {
                        tracing::warn!(db = %self.label, retry_in_ms, "the outbox table does not exist yet (participant migrations not run?); retrying");
                    } else {
                        tracing::warn!(db = %self.label, retry_in_ms, error = format!("{e:#}"), "relaying outbox rows failed; retrying");
                    }
                    Wait::Retry(delay)
                }
            };
            match wait {
                Wait::Idle => tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = wake.notified() => {}
                    () = tokio::time::sleep(self.poll_interval) => {}
                },
                Wait::Retry(delay) => tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = wake.notified() => {}
                    () = tokio::time::sleep(delay) => {}
                },
                Wait::Backoff(delay) => tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                },
            }
        }
    }
}

/// Rows this worker does not retry before a given instant.
#[derive(Debug, Default)]
struct Deferred {
    until: HashMap<i64, Instant>,
}

impl Deferred {
    fn defer(&mut self, f: &Failed) {
        self.until
            .insert(f.id, Instant::now() + jitter(row_retry_delay(f.attempts)));
    }

    /// Ids still deferred now (expired entries are dropped).
    fn active(&mut self) -> Vec<i64> {
        let now = Instant::now();
        self.until.retain(|_, t| *t > now);
        self.until.keys().copied().collect()
    }
}

/// 1 s after the first failure, doubling per attempt up to a minute.
fn row_retry_delay(attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 16) as u32;
    ROW_RETRY_INITIAL
        .saturating_mul(1 << doublings)
        .min(ROW_RETRY_MAX)
}

fn is_missing_table(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .any(|e| e.code() == Some(&SqlState::UNDEFINED_TABLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_retry_delay_doubles_up_to_a_minute() {
        let s = Duration::from_secs;
        assert_eq!(row_retry_delay(1), s(1));
        assert_eq!(row_retry_delay(2), s(2));
        assert_eq!(row_retry_delay(4), s(8));
        assert_eq!(row_retry_delay(7), s(60));
        assert_eq!(row_retry_delay(i32::MAX), s(60));
        assert_eq!(row_retry_delay(0), s(1));
    }

    #[tokio::test(start_paused = true)]
    async fn deferred_rows_come_back_after_their_delay() {
        let mut d = Deferred::default();
        d.defer(&Failed {
            id: 7,
            attempts: 1,
            topic_missing: false,
        });
        assert_eq!(d.active(), vec![7]);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(d.active().is_empty());
    }
}
