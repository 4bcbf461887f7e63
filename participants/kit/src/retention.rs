//! Inbox retention: command ids handled longer ago than the retention are
//! forgotten.
//!
//! An inbox row answers a repeat of its command with the stored outcome. A
//! repeat can come as long as the orchestrator may re-send that command:
//! keep the inbox at least as long as the orchestrator keeps applied event
//! ids (`SAGAFLOW_DEDUPE_RETENTION_SECS`, 15 days by default). A command
//! repeated after its row is gone is handled again; the business tables of
//! this crate are keyed by saga, so that answers with the same decision
//! (a second charge finds the first), under a new event id that the
//! orchestrator ignores as an outcome it already has.

use std::time::Duration;

use deadpool_postgres::Pool;
use sagaflow_common::db::Migration;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Version 10 of every participant database: the index the sweep walks.
pub const MIGRATION: Migration = Migration {
    version: 10,
    name: "inbox retention index",
    sql: "CREATE INDEX inbox_received_at_idx ON inbox (received_at);",
};

/// Rows deleted per statement, so no sweep holds locks for long.
const BATCH: i64 = 5_000;

/// Delete inbox rows older than `retention`; how many.
pub async fn sweep(pool: &Pool, retention: Duration) -> Result<u64, Error> {
    let client = pool.get().await?;
    let delete = client
        .prepare_cached(
            "DELETE FROM inbox WHERE command_id IN (
                 SELECT command_id FROM inbox
                 WHERE received_at < now() - $1 * interval '1 second' LIMIT $2)",
        )
        .await?;
    let mut total = 0;
    loop {
        let n = client
            .execute(&delete, &[&retention.as_secs_f64(), &BATCH])
            .await?;
        total += n;
        if (n as i64) < BATCH {
            return Ok(total);
        }
    }
}

/// Sweep every `interval` until shutdown.
pub async fn run(pool: Pool, retention: Duration, interval: Duration, shutdown: CancellationToken) {
    loop {
        match sweep(&pool, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention: old inbox rows deleted"),
            Err(e) => {
                tracing::warn!(error = %e.describe(), "inbox retention sweep failed; will retry")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
