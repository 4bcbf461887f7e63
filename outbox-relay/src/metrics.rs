//! The relay's metrics (every name, type and label: docs/metrics.md), by
//! database (its name, as in the logs: a bounded set, from the settings).
//!
//! Each worker holds its own handles ([`Metrics::worker`]), so counting a
//! batch is a few atomic adds. The backlog of each outbox is read from its
//! database at scrape time ([`Metrics::refresh_backlog`]), so it is right
//! with any number of relays.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sagaflow_common::ops::{SecondsFamily, seconds_family};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbLabels {
    database: Arc<str>,
}

/// Every metric of the relay.
pub struct Metrics {
    published: Family<DbLabels, Counter>,
    publish_errors: Family<DbLabels, Counter>,
    database_errors: Family<DbLabels, Counter>,
    lag: SecondsFamily<DbLabels>,
    backlog: Family<DbLabels, Gauge>,
    oldest: Family<DbLabels, Gauge<f64, AtomicU64>>,
    listening: Family<DbLabels, Gauge>,
}

/// One worker's handles: counting needs no label lookup.
#[derive(Clone)]
pub(crate) struct WorkerMetrics {
    pub published: Counter,
    pub publish_errors: Counter,
    pub database_errors: Counter,
    /// `sent_at - created_at` of each row marked sent.
    pub lag: Histogram,
}

impl Metrics {
    /// Register every metric with `registry` (prefix it `sagaflow_relay`).
    pub fn register(registry: &mut Registry) -> Arc<Metrics> {
        let m = Metrics {
            published: Family::default(),
            publish_errors: Family::default(),
            database_errors: Family::default(),
            lag: seconds_family(),
            backlog: Family::default(),
            oldest: Family::default(),
            listening: Family::default(),
        };
        registry.register(
            "rows_published",
            "Outbox rows Pub/Sub acknowledged and the relay marked sent",
            m.published.clone(),
        );
        registry.register(
            "publish_errors",
            "Publishes of outbox rows that failed (the row is retried later)",
            m.publish_errors.clone(),
        );
        registry.register(
            "database_errors",
            "Rounds that failed on the database (unreachable, no outbox table yet); retried with backoff",
            m.database_errors.clone(),
        );
        registry.register(
            "commit_to_ack_seconds",
            "Per row: from its insert (the participant's transaction) to Pub/Sub's acknowledgement (sent_at - created_at)",
            m.lag.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Unsent outbox rows, read from the database at scrape time",
            m.backlog.clone(),
        );
        registry.register(
            "outbox_oldest_unsent_seconds",
            "Age of the oldest unsent outbox row (0 when none), read at scrape time",
            m.oldest.clone(),
        );
        registry.register(
            "listen_connections_up",
            "1 while the LISTEN connection to the database is up, else 0",
            m.listening.clone(),
        );
        Arc::new(m)
    }

    fn labels(database: &str) -> DbLabels {
        DbLabels {
            database: Arc::from(database),
        }
    }

    /// The handles of the worker of `database`.
    pub(crate) fn worker(&self, database: &str) -> WorkerMetrics {
        let labels = Self::labels(database);
        WorkerMetrics {
            published: self.published.get_or_create_owned(&labels),
            publish_errors: self.publish_errors.get_or_create_owned(&labels),
            database_errors: self.database_errors.get_or_create_owned(&labels),
            lag: self.lag.get_or_create_owned(&labels),
        }
    }

    /// Whether the LISTEN connection of `database` is up now.
    pub(crate) fn set_listening(&self, database: &str, up: &AtomicBool) {
        self.listening
            .get_or_create(&Self::labels(database))
            .set(i64::from(up.load(Ordering::Relaxed)));
    }

    /// Read the backlog of `database`'s outbox through `pool`. On failure
    /// its gauges are removed rather than left stale.
    pub(crate) async fn refresh_backlog(&self, database: &str, pool: &deadpool_postgres::Pool) {
        let labels = Self::labels(database);
        let read = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            client
                .query_one(BACKLOG, &[])
                .await
                .map(|r| (r.get::<_, i64>(0), r.get::<_, f64>(1)))
                .map_err(|e| e.to_string())
        }
        .await;
        match read {
            Ok((rows, oldest)) => {
                self.backlog.get_or_create(&labels).set(rows);
                self.oldest.get_or_create(&labels).set(oldest);
            }
            Err(e) => {
                tracing::debug!(db = %database, error = %e, "reading the outbox backlog for /metrics failed");
                self.backlog.remove(&labels);
                self.oldest.remove(&labels);
            }
        }
    }
}

/// Unsent rows and the age of the oldest, in seconds (a range scan of the
/// unsent-rows index).
const BACKLOG: &str = "
    SELECT count(*),
           coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8
    FROM outbox WHERE sent_at IS NULL";
