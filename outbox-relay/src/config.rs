//! The relay's settings, read from the environment (see the README for the
//! full list).

use std::time::Duration;

use anyhow::Context as _;
use sagaflow_common::config::{self, Var, databases, default_database_url};

/// Every variable the relay reads (beyond
/// [`sagaflow_common::config::COMMON_VARS`]), for `--help`.
pub const VARS: &[Var] = &[
    Var {
        name: "SAGAFLOW_RELAY_DATABASE_URLS",
        default: "the three participant databases",
        meaning: "comma-separated databases whose outboxes it serves",
    },
    Var {
        name: "SAGAFLOW_EVENTS_TOPIC",
        default: "sagaflow-events",
        meaning: "topic it publishes to",
    },
    Var {
        name: "SAGAFLOW_RELAY_BATCH_SIZE",
        default: "100",
        meaning: "rows claimed per transaction (1..=10000)",
    },
    Var {
        name: "SAGAFLOW_RELAY_POLL_INTERVAL_MS",
        default: "500",
        meaning: "polling fallback when no NOTIFY arrives (1..=3600000)",
    },
    Var {
        name: "SAGAFLOW_RELAY_MAX_IN_FLIGHT",
        default: "1000",
        meaning: "publishes awaiting Pub/Sub at once (1..=1000000)",
    },
    Var {
        name: "SAGAFLOW_RELAY_PUBLISH_DELAY_MS",
        default: "5",
        meaning: "longest wait for other events to share a Pub/Sub batch (0..=1000)",
    },
    Var {
        name: "SAGAFLOW_RELAY_ORDERING_KEY",
        default: "false",
        meaning: "publish with the saga id as ordering key (one batch per saga; only for ordered subscriptions)",
    },
    Var {
        name: "SAGAFLOW_RELAY_RETENTION_SECS",
        default: "3600",
        meaning: "sent rows older than this are deleted (0..=315360000)",
    },
    Var {
        name: "SAGAFLOW_RELAY_CLEANUP_INTERVAL_MS",
        default: "60000",
        meaning: "how often that cleanup runs (1..=86400000)",
    },
    Var {
        name: "SAGAFLOW_RELAY_HTTP_LISTEN",
        default: "127.0.0.1:8084",
        meaning: "HTTP address: /healthz, /readyz, /metrics (off: no HTTP server)",
    },
];
use sagaflow_common::db;
use sagaflow_common::pubsub::PubSubConfig;

/// Everything [`run`](crate::run) needs.
#[derive(Clone)]
pub struct RelayConfig {
    /// Participant databases whose outboxes this relay drains; one worker
    /// each. `SAGAFLOW_RELAY_DATABASE_URLS`, comma-separated.
    pub database_urls: Vec<String>,
    /// Where Pub/Sub is (`SAGAFLOW_PUBSUB_PROJECT`, `PUBSUB_EMULATOR_HOST`).
    pub pubsub: PubSubConfig,
    /// Topic every event goes to. `SAGAFLOW_EVENTS_TOPIC`.
    pub topic_id: String,
    /// Rows claimed (and locked) per transaction. `SAGAFLOW_RELAY_BATCH_SIZE`.
    pub batch_size: i64,
    /// How often to look for rows when no `NOTIFY` arrives (missed
    /// notifications, a lost LISTEN connection). `SAGAFLOW_RELAY_POLL_INTERVAL_MS`.
    pub poll_interval: Duration,
    /// How long sent rows are kept before cleanup deletes them.
    /// `SAGAFLOW_RELAY_RETENTION_SECS`.
    pub retention: Duration,
    /// How often cleanup runs. `SAGAFLOW_RELAY_CLEANUP_INTERVAL_MS`.
    pub cleanup_interval: Duration,
    /// Messages in flight to Pub/Sub at once, across all databases.
    /// `SAGAFLOW_RELAY_MAX_IN_FLIGHT`.
    pub max_in_flight: usize,
    /// Longest wait for other events to share a Pub/Sub batch.
    /// `SAGAFLOW_RELAY_PUBLISH_DELAY_MS`.
    pub publish_delay: Duration,
    /// Publish with the saga id as ordering key. Off by default: the
    /// orchestrator's subscription is unordered and nothing depends on the
    /// order, and a key gives every saga its own batch (no batching across
    /// sagas). `SAGAFLOW_RELAY_ORDERING_KEY`.
    pub ordering_key: bool,
    /// The HTTP address of `/healthz`, `/readyz` and `/metrics`;
    /// `None`: no HTTP server. `SAGAFLOW_RELAY_HTTP_LISTEN`.
    pub http_listen: Option<String>,
}

impl RelayConfig {
    /// Read the settings; a malformed value is an error naming its variable.
    pub fn from_env() -> anyhow::Result<Self> {
        let database_urls = match config::var_opt("SAGAFLOW_RELAY_DATABASE_URLS") {
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
            None => [databases::ORDER, databases::PAYMENT, databases::INVENTORY]
                .map(default_database_url)
                .to_vec(),
        };
        let cfg = Self {
            database_urls,
            pubsub: PubSubConfig::from_env(),
            topic_id: config::var_or("SAGAFLOW_EVENTS_TOPIC", "sagaflow-events"),
            batch_size: config::int_in("SAGAFLOW_RELAY_BATCH_SIZE", 100, 1..=10_000)?,
            poll_interval: config::millis_in(
                "SAGAFLOW_RELAY_POLL_INTERVAL_MS",
                500,
                1..=3_600_000,
            )?,
            retention: config::secs_in(
                "SAGAFLOW_RELAY_RETENTION_SECS",
                3600,
                0..=3650 * 24 * 3600,
            )?,
            cleanup_interval: config::millis_in(
                "SAGAFLOW_RELAY_CLEANUP_INTERVAL_MS",
                60_000,
                1..=86_400_000,
            )?,
            max_in_flight: config::int_in("SAGAFLOW_RELAY_MAX_IN_FLIGHT", 1000, 1..=1_000_000)?,
            publish_delay: config::millis_in("SAGAFLOW_RELAY_PUBLISH_DELAY_MS", 5, 0..=1000)?,
            ordering_key: config::bool_or("SAGAFLOW_RELAY_ORDERING_KEY", false)?,
            http_listen: sagaflow_common::ops::listen_from_env(
                "SAGAFLOW_RELAY_HTTP_LISTEN",
                "127.0.0.1:8084",
            ),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check values that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.database_urls.is_empty(),
            "SAGAFLOW_RELAY_DATABASE_URLS names no database"
        );
        for url in &self.database_urls {
            url.parse::<tokio_postgres::Config>()
                .with_context(|| format!("invalid database url {}", db::redact(url)))?;
        }
        anyhow::ensure!(
            (1..=10_000).contains(&self.batch_size),
            "SAGAFLOW_RELAY_BATCH_SIZE must be within 1..=10000, got {}",
            self.batch_size
        );
        anyhow::ensure!(
            !self.poll_interval.is_zero() && !self.cleanup_interval.is_zero(),
            "SAGAFLOW_RELAY_POLL_INTERVAL_MS and SAGAFLOW_RELAY_CLEANUP_INTERVAL_MS must be positive"
        );
        anyhow::ensure!(
            self.max_in_flight > 0,
            "SAGAFLOW_RELAY_MAX_IN_FLIGHT must be positive"
        );
        Ok(())
    }
}

/// Debug without passwords.
impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.database_urls.iter().map(|u| db::redact(u)).collect();
        f.debug_struct("RelayConfig")
            .field("database_urls", &urls)
            .field("pubsub", &self.pubsub)
            .field("topic_id", &self.topic_id)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("retention", &self.retention)
            .field("cleanup_interval", &self.cleanup_interval)
            .field("max_in_flight", &self.max_in_flight)
            .field("publish_delay", &self.publish_delay)
            .field("ordering_key", &self.ordering_key)
            .field("http_listen", &self.http_listen)
            .finish()
    }
}

/// A short name for a database in logs: its database name, else the
/// redacted url.
pub(crate) fn label(url: &str) -> String {
    url.parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_dbname().map(str::to_owned))
        .unwrap_or_else(|| db::redact(url))
}
