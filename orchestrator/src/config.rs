//! Orchestrator configuration, from environment variables ([`VARS`], also
//! in the README and `sagaflow-orchestrator --help`). Every value is checked
//! when read: a bad one stops the process with a message naming it.

use std::collections::HashMap;
use std::time::Duration;

use sagaflow_common::config::{
    Var, bool_or, databases, default_database_url, int_in, millis_in, secs_in, var_or,
};

use crate::definitions::order;
use crate::driver::Limits;
use crate::retention::Retention;

/// Every variable the orchestrator reads (beyond [`sagaflow_common::config::COMMON_VARS`]).
pub const VARS: &[Var] = &[
    Var {
        name: "SAGAFLOW_ORCHESTRATOR_LISTEN",
        default: "127.0.0.1:50051",
        meaning: "gRPC listen address",
    },
    Var {
        name: "SAGAFLOW_ORCHESTRATOR_DATABASE_URL",
        default: "postgres://postgres@127.0.0.1:5432/sagaflow_orchestrator",
        meaning: "its database (created if missing)",
    },
    Var {
        name: "SAGAFLOW_ORDER_URL",
        default: "http://127.0.0.1:50061",
        meaning: "the order participant",
    },
    Var {
        name: "SAGAFLOW_PAYMENT_URL",
        default: "http://127.0.0.1:50062",
        meaning: "the payment participant",
    },
    Var {
        name: "SAGAFLOW_INVENTORY_URL",
        default: "http://127.0.0.1:50063",
        meaning: "the inventory participant",
    },
    Var {
        name: "SAGAFLOW_EVENTS_TOPIC",
        default: "sagaflow-events",
        meaning: "topic the relay publishes events to",
    },
    Var {
        name: "SAGAFLOW_EVENTS_SUBSCRIPTION",
        default: "sagaflow-orchestrator",
        meaning: "subscription it consumes (created if missing)",
    },
    Var {
        name: "SAGAFLOW_SUBSCRIPTION_ORDERING",
        default: "false",
        meaning: "create the subscription with message ordering",
    },
    Var {
        name: "SAGAFLOW_SUBSCRIBER_STREAMS",
        default: "2",
        meaning: "parallel streaming pulls (1..=64)",
    },
    Var {
        name: "SAGAFLOW_CONSUMER_CONCURRENCY",
        default: "64",
        meaning: "events applied at once (1..=10000)",
    },
    Var {
        name: "SAGAFLOW_MAX_CONCURRENT_SENDS",
        default: "256",
        meaning: "commands in flight at once, all participants (1..=100000)",
    },
    Var {
        name: "SAGAFLOW_MAX_CONCURRENT_SENDS_PER_PARTICIPANT",
        default: "64",
        meaning: "commands in flight at once to one participant (1..=100000)",
    },
    Var {
        name: "SAGAFLOW_MAX_QUEUED_SENDS",
        default: "10000",
        meaning: "sends waiting or running; past it a send is dropped and its deadline re-sends it (1..=10000000)",
    },
    Var {
        name: "SAGAFLOW_COMMAND_TIMEOUT_MS",
        default: "5000",
        meaning: "timeout of one command call (1..=3600000)",
    },
    Var {
        name: "SAGAFLOW_PLACEMENT_CHECK_TIMEOUT_MS",
        default: "1000",
        meaning: "how long PlaceOrder waits for the item and customer look-ups before accepting unchecked (1..=60000)",
    },
    Var {
        name: "SAGAFLOW_TIMER_POLL_MS",
        default: "500",
        meaning: "how often persisted deadlines are checked (10..=3600000)",
    },
    Var {
        name: "SAGAFLOW_DEAD_LETTER_TOPIC",
        default: "<events topic>-dead-letter",
        meaning: "where poison messages go",
    },
    Var {
        name: "SAGAFLOW_DEAD_LETTER_SUBSCRIPTION",
        default: "<events subscription>-dead-letter",
        meaning: "drained into the dead_letters table",
    },
    Var {
        name: "SAGAFLOW_MAX_DELIVERY_ATTEMPTS",
        default: "5",
        meaning: "deliveries before Pub/Sub dead-letters a message (5..=100)",
    },
    Var {
        name: "SAGAFLOW_MESSAGE_RETENTION_SECS",
        default: "604800",
        meaning: "how long Pub/Sub may still deliver a message (its subscription's retention; 600..=2678400)",
    },
    Var {
        name: "SAGAFLOW_DEAD_LETTER_RETENTION_SECS",
        default: "1209600",
        meaning: "dead letters older than this are deleted (3600..=315360000)",
    },
    Var {
        name: "SAGAFLOW_DEDUPE_RETENTION_SECS",
        default: "1296000",
        meaning: "applied event ids older than this are forgotten; at least the message and dead-letter retentions (3600..=315360000)",
    },
    Var {
        name: "SAGAFLOW_HISTORY_RETENTION_SECS",
        default: "2592000",
        meaning: "history of sagas finished longer ago than this is deleted (3600..=315360000)",
    },
    Var {
        name: "SAGAFLOW_RETENTION_INTERVAL_SECS",
        default: "3600",
        meaning: "how often the retention cleanup runs (1..=86400)",
    },
    Var {
        name: "SAGAFLOW_STEP_DEADLINE_MS",
        default: "10000",
        meaning: "order saga: wait for an action's outcome before re-sending it (1..=2592000000)",
    },
    Var {
        name: "SAGAFLOW_STEP_MAX_ATTEMPTS",
        default: "5",
        meaning: "order saga: sends of an action before its outcome is unknown (1..=1000000)",
    },
    Var {
        name: "SAGAFLOW_COMPENSATION_DEADLINE_MS",
        default: "the step deadline",
        meaning: "order saga: the same for a compensation (1..=2592000000)",
    },
    Var {
        name: "SAGAFLOW_COMPENSATION_MAX_ATTEMPTS",
        default: "10",
        meaning: "order saga: sends of a compensation before the saga pauses (1..=1000000)",
    },
    Var {
        name: "SAGAFLOW_STEP_BACKOFF_BASE_MS",
        default: "100",
        meaning: "order saga: first delay between failed sends (1..=3600000)",
    },
    Var {
        name: "SAGAFLOW_STEP_BACKOFF_CAP_MS",
        default: "5000",
        meaning: "order saga: largest delay between failed sends (base..=3600000)",
    },
    Var {
        name: "SAGAFLOW_STEP_JITTER_PERCENT",
        default: "50",
        meaning: "order saga: randomised share of each delay (0..=100)",
    },
];

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub database_url: String,
    pub pool_size: usize,
    /// Participant key → gRPC URL.
    pub participants: HashMap<String, String>,
    pub events_topic: String,
    pub events_subscription: String,
    /// Ask Pub/Sub for per-saga ordering (correctness never depends on it).
    pub subscription_ordering: bool,
    pub subscriber_streams: usize,
    pub consumer_concurrency: usize,
    pub sends: Limits,
    pub command_timeout: Duration,
    pub placement_check_timeout: Duration,
    /// Where poison messages go, and its subscription (drained into the
    /// `dead_letters` table).
    pub dead_letter_topic: String,
    pub dead_letter_subscription: String,
    /// Deliveries before Pub/Sub forwards a message to the dead-letter topic
    /// (5..=100).
    pub max_delivery_attempts: i32,
    pub timer_poll: Duration,
    pub retention: Retention,
}

impl Config {
    /// Read and check every setting; the error names the first bad one.
    pub fn from_env() -> anyhow::Result<Self> {
        order::check_env()?;
        let participants = [
            (order::ORDER, "SAGAFLOW_ORDER_URL", "http://127.0.0.1:50061"),
            (
                order::PAYMENT,
                "SAGAFLOW_PAYMENT_URL",
                "http://127.0.0.1:50062",
            ),
            (
                order::INVENTORY,
                "SAGAFLOW_INVENTORY_URL",
                "http://127.0.0.1:50063",
            ),
        ]
        .into_iter()
        .map(|(k, var, default)| (k.to_owned(), var_or(var, default)))
        .collect();
        let events_topic = var_or("SAGAFLOW_EVENTS_TOPIC", "sagaflow-events");
        let events_subscription = var_or("SAGAFLOW_EVENTS_SUBSCRIPTION", "sagaflow-orchestrator");
        let retention = Retention {
            message: secs_in("SAGAFLOW_MESSAGE_RETENTION_SECS", 7 * DAY, 600..=31 * DAY)?,
            dead_letters: secs_in(
                "SAGAFLOW_DEAD_LETTER_RETENTION_SECS",
                14 * DAY,
                HOUR..=10 * 365 * DAY,
            )?,
            dedupe: secs_in(
                "SAGAFLOW_DEDUPE_RETENTION_SECS",
                15 * DAY,
                HOUR..=10 * 365 * DAY,
            )?,
            history: secs_in(
                "SAGAFLOW_HISTORY_RETENTION_SECS",
                30 * DAY,
                HOUR..=10 * 365 * DAY,
            )?,
            interval: secs_in("SAGAFLOW_RETENTION_INTERVAL_SECS", HOUR, 1..=DAY)?,
        };
        retention.check()?;
        Ok(Config {
            listen: var_or("SAGAFLOW_ORCHESTRATOR_LISTEN", "127.0.0.1:50051"),
            dead_letter_topic: var_or(
                "SAGAFLOW_DEAD_LETTER_TOPIC",
                &format!("{events_topic}-dead-letter"),
            ),
            dead_letter_subscription: var_or(
                "SAGAFLOW_DEAD_LETTER_SUBSCRIPTION",
                &format!("{events_subscription}-dead-letter"),
            ),
            max_delivery_attempts: int_in("SAGAFLOW_MAX_DELIVERY_ATTEMPTS", 5, 5..=100)?,
            database_url: var_or(
                "SAGAFLOW_ORCHESTRATOR_DATABASE_URL",
                &default_database_url(databases::ORCHESTRATOR),
            ),
            pool_size: int_in("SAGAFLOW_DB_POOL_SIZE", 16, 1..=1000)?,
            participants,
            events_topic,
            events_subscription,
            subscription_ordering: bool_or("SAGAFLOW_SUBSCRIPTION_ORDERING", false)?,
            subscriber_streams: int_in("SAGAFLOW_SUBSCRIBER_STREAMS", 2, 1..=64)?,
            consumer_concurrency: int_in("SAGAFLOW_CONSUMER_CONCURRENCY", 64, 1..=10_000)?,
            sends: Limits {
                total: int_in("SAGAFLOW_MAX_CONCURRENT_SENDS", 256, 1..=100_000)?,
                per_participant: int_in(
                    "SAGAFLOW_MAX_CONCURRENT_SENDS_PER_PARTICIPANT",
                    64,
                    1..=100_000,
                )?,
                queued: int_in("SAGAFLOW_MAX_QUEUED_SENDS", 10_000, 1..=10_000_000)?,
            },
            command_timeout: millis_in("SAGAFLOW_COMMAND_TIMEOUT_MS", 5000, 1..=3_600_000)?,
            placement_check_timeout: millis_in(
                "SAGAFLOW_PLACEMENT_CHECK_TIMEOUT_MS",
                1000,
                1..=60_000,
            )?,
            timer_poll: millis_in("SAGAFLOW_TIMER_POLL_MS", 500, 10..=3_600_000)?,
            retention,
        })
    }
}

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
