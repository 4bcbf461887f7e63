//! The outbox relay: moves events from participants' outbox tables to the
//! Pub/Sub events topic.
//!
//! Each participant commits its outcome event into its own `outbox` table in
//! the same transaction as the business change. The relay claims unsent rows
//! with `FOR UPDATE SKIP LOCKED` (so several relays can run against the same
//! databases), publishes each row's payload with `event_id` / `saga_id` /
//! `event_type` / `traceparent` attributes (batched across sagas; the saga
//! id as ordering key only when `SAGAFLOW_RELAY_ORDERING_KEY` asks), and
//! marks the rows Pub/Sub acknowledged as sent in the same transaction.
//! Delivery is at least once: a crash between publish and commit publishes
//! the row again, and consumers dedupe on `event_id`.
//!
//! Layout:
//! - [`config`]: [`RelayConfig`] from the environment.
//! - `worker`: one per database; the claim loop and its error handling.
//! - `batch`: claim → publish concurrently → mark sent / failed → commit.
//! - `listener`: `LISTEN sagaflow_outbox` wake-ups (polling is the fallback).
//! - `cleanup`: deletes sent rows past the retention period.
//! - `topic`: re-creates the topic when an emulator restart lost it.
//! - `backoff`: exponential backoff with jitter.
//! - [`metrics`]: what `/metrics` counts, and each outbox's backlog.
//!
//! Its HTTP address (`SAGAFLOW_RELAY_HTTP_LISTEN`) serves `/healthz`,
//! `/readyz` (ready while every database answers and every LISTEN
//! connection is up, until the drain begins) and `/metrics`.
//!
//! The relay does not create outbox tables (participants' migrations do); it
//! waits for them. It creates the topic only on the emulator, at start and
//! again whenever a publish finds it missing (the emulator forgets
//! everything when restarted).

pub mod config;
pub mod metrics;

mod backoff;
mod batch;
mod cleanup;
mod listener;
mod topic;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use sagaflow_common::db;
use sagaflow_common::ops::{self, DbProbe, Ops};
use sagaflow_common::pubsub::{EventPublisher, ensure_topic};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use batch::CLAIM;
pub use config::RelayConfig;

/// Connections per database: one for the claim loop, one for cleanup, one
/// spare for a reconnect racing a closing connection.
const POOL_SIZE: usize = 3;

/// Settings of the relay's database sessions. The claim must stay a range
/// scan of the unsent-rows index however the table churns: rows are
/// inserted and marked sent all the time, so the planner's statistics of
/// `outbox` are always stale, and a sequential scan would read every row
/// kept for the retention period on every claim.
pub const SESSION_SETTINGS: [(&str, &str); 1] = [("enable_seqscan", "off")];

/// Relay every configured database until `shutdown` is cancelled, then stop
/// claiming, finish the batches in hand, flush the publisher and return.
/// The HTTP address (when configured) answers from the start until then.
///
/// Errors only for bad configuration or a worker that panicked; transient
/// database and Pub/Sub failures are retried forever.
pub async fn run(config: RelayConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    tracing::info!(?config, "starting outbox relay");
    let mut registry = prometheus_client::registry::Registry::with_prefix("sagaflow_relay");
    let metrics = metrics::Metrics::register(&mut registry);
    let databases: Vec<Database> = config
        .database_urls
        .iter()
        .map(|url| {
            Ok(Database {
                label: config::label(url),
                probe: DbProbe::new(url)?,
                listening: Arc::new(AtomicBool::new(false)),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    // The HTTP address outlives the drain: it stops once the rest has.
    let http_stop = CancellationToken::new();
    let _stop_http = http_stop.clone().drop_guard();
    let web = match &config.http_listen {
        Some(addr) => {
            let listener = ops::bind("SAGAFLOW_RELAY_HTTP_LISTEN", addr).await?;
            let ops = operations(registry, &databases, &shutdown, metrics.clone());
            Some(ops::spawn(listener, ops, http_stop.clone()))
        }
        None => None,
    };
    if config.pubsub.emulator_host.is_some() && !create_topic(&config, &shutdown).await {
        return Ok(());
    }
    let publisher = Arc::new(
        EventPublisher::with_delay(
            &config.pubsub,
            &config.topic_id,
            config.max_in_flight,
            Some(config.publish_delay),
        )
        .await?,
    );

    let topic = Arc::new(topic::Topic::new(
        config.pubsub.clone(),
        config.topic_id.clone(),
    ));

    let stop = shutdown.child_token();
    let mut workers = JoinSet::new();
    for (url, database) in config.database_urls.iter().zip(&databases) {
        let worker = worker::Worker {
            url: url.clone(),
            label: database.label.clone(),
            pool: db::pool_with_settings(url, POOL_SIZE, &SESSION_SETTINGS)?,
            publisher: publisher.clone(),
            topic: topic.clone(),
            batch_size: config.batch_size,
            poll_interval: config.poll_interval,
            retention: config.retention,
            cleanup_interval: config.cleanup_interval,
            ordering_key: config.ordering_key,
            listening: database.listening.clone(),
            metrics: metrics.worker(&database.label),
        };
        workers.spawn(worker.run(stop.clone()));
    }
    let mut result = Ok(());
    while let Some(joined) = workers.join_next().await {
        if let Err(e) = joined {
            // A bug, not a transient error: stop everything and let the
            // supervisor restart the process.
            tracing::error!(error = %e, "an outbox worker panicked; stopping the relay");
            stop.cancel();
            result = Err(anyhow::Error::new(e).context("an outbox worker panicked"));
        }
    }
    match Arc::try_unwrap(publisher) {
        Ok(p) => p.shutdown().await,
        Err(p) => p.flush().await,
    }
    http_stop.cancel();
    if let Some(web) = web {
        match web.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "the HTTP server failed"),
            Err(e) => tracing::warn!(error = %e, "the HTTP server panicked"),
        }
    }
    tracing::info!("outbox relay stopped");
    result
}

/// One database the relay serves, as the HTTP address sees it.
struct Database {
    /// Its name, as in the logs and the metrics' `database` label.
    label: String,
    probe: DbProbe,
    /// Whether its worker's LISTEN connection is up.
    listening: Arc<AtomicBool>,
}

/// The operations routes: ready while every database answers and every
/// LISTEN connection is up, until the drain begins; the backlogs read from
/// the databases at scrape time.
fn operations(
    registry: prometheus_client::registry::Registry,
    databases: &[Database],
    shutdown: &CancellationToken,
    metrics: Arc<metrics::Metrics>,
) -> Ops {
    let mut ops = Ops::new(registry, shutdown.clone());
    for db in databases {
        let probe = db.probe.clone();
        ops = ops.check(format!("database {}", db.label), move || {
            let probe = probe.clone();
            async move { probe.check().await }
        });
        let listening = db.listening.clone();
        ops = ops.check(format!("listen {}", db.label), move || {
            let up = listening.load(Ordering::Relaxed);
            async move {
                up.then_some(())
                    .ok_or_else(|| "the LISTEN connection is down".to_owned())
            }
        });
    }
    let each: Vec<(String, DbProbe, Arc<AtomicBool>)> = databases
        .iter()
        .map(|d| (d.label.clone(), d.probe.clone(), d.listening.clone()))
        .collect();
    ops.refresh(move || {
        let (metrics, each) = (metrics.clone(), each.clone());
        async move {
            let reads = each.iter().map(|(label, probe, listening)| {
                metrics.set_listening(label, listening);
                metrics.refresh_backlog(label, probe.pool())
            });
            futures::future::join_all(reads).await;
        }
    })
}

/// Create the topic (emulator only), retrying until it works. `false` when
/// shut down first.
async fn create_topic(config: &RelayConfig, shutdown: &CancellationToken) -> bool {
    let mut backoff = backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let created = tokio::select! {
            () = shutdown.cancelled() => return false,
            r = ensure_topic(&config.pubsub, &config.topic_id) => r,
        };
        let err = match created.context("creating the events topic on the emulator") {
            Ok(()) => return true,
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        tracing::warn!(
            error = format!("{err:#}"),
            retry_in_ms = delay.as_millis() as u64,
            "Pub/Sub emulator not ready"
        );
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
