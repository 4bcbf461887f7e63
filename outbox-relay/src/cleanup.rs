//! Deletes sent rows older than the retention period, in small batches so
//! no single statement holds many locks or runs long.

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::backoff::jitter;

/// Rows deleted per statement.
pub(crate) const DELETE_BATCH: i64 = 1000;

/// Rows locked by a relay that is still publishing them are skipped; sent
/// rows are never locked for long. Uses the partial index on `sent_at`.
const DELETE_OLD: &str = "
    DELETE FROM outbox
    WHERE id IN (
        SELECT id FROM outbox
        WHERE sent_at < now() - make_interval(secs => $1)
        LIMIT $2
        FOR UPDATE SKIP LOCKED)";

/// Every `interval` (with jitter), delete rows sent more than `retention`
/// ago, until `stop`.
pub(crate) async fn run(
    pool: Pool,
    label: String,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(jitter(interval)) => {}
        }
        let deleted = tokio::select! {
            () = stop.cancelled() => return,
            r = delete_old(&pool, retention) => r,
        };
        match deleted {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(db = %label, deleted = n, "deleted sent outbox rows past retention")
            }
            // The claim loop reports an unreachable database or missing table.
            Err(e) => {
                tracing::debug!(db = %label, error = format!("{e:#}"), "outbox cleanup failed")
            }
        }
    }
}

/// Delete in batches until fewer than a full batch is left; returns the
/// number of rows deleted.
pub(crate) async fn delete_old(pool: &Pool, retention: Duration) -> anyhow::Result<u64> {
    let client = pool.get().await.context("getting a database connection")?;
    let secs = retention.as_secs_f64();
    let mut total = 0;
    loop {
        let n = client
            .execute(DELETE_OLD, &[&secs, &DELETE_BATCH])
            .await
            .context("deleting old outbox rows")?;
        total += n;
        if n < DELETE_BATCH as u64 {
            return Ok(total);
        }
    }
}
