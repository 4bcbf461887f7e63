//! Orchestrator configuration, from environment variables (see the README).

use std::collections::HashMap;
use std::time::Duration;

use sagaflow_common::config::{self, databases, default_database_url, millis_or, parse_or, var_or};

use crate::definitions::order;

#[derive(Debug, Clone)]
pub struct Config {
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
    pub max_concurrent_sends: usize,
    pub command_timeout: Duration,
    /// Where poison messages go, and its subscription (drained into the
    /// `dead_letters` table).
    pub dead_letter_topic: String,
    pub dead_letter_subscription: String,
    /// Deliveries before Pub/Sub forwards a message to the dead-letter topic
    /// (5..=100).
    pub max_delivery_attempts: i32,
    pub timer_poll: Duration,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
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
        let max_delivery_attempts = parse_or("SAGAFLOW_MAX_DELIVERY_ATTEMPTS", 5)?;
        if !(5..=100).contains(&max_delivery_attempts) {
            anyhow::bail!(
                "SAGAFLOW_MAX_DELIVERY_ATTEMPTS must be within 5..=100, got {max_delivery_attempts}"
            );
        }
        Ok(Config {
            dead_letter_topic: var_or(
                "SAGAFLOW_DEAD_LETTER_TOPIC",
                &format!("{events_topic}-dead-letter"),
            ),
            dead_letter_subscription: var_or(
                "SAGAFLOW_DEAD_LETTER_SUBSCRIPTION",
                &format!("{events_subscription}-dead-letter"),
            ),
            max_delivery_attempts,
            database_url: var_or(
                "SAGAFLOW_ORCHESTRATOR_DATABASE_URL",
                &default_database_url(databases::ORCHESTRATOR),
            ),
            pool_size: parse_or("SAGAFLOW_DB_POOL_SIZE", 16)?,
            participants,
            events_topic,
            events_subscription,
            subscription_ordering: parse_or("SAGAFLOW_SUBSCRIPTION_ORDERING", false)?,
            subscriber_streams: parse_or("SAGAFLOW_SUBSCRIBER_STREAMS", 2)?,
            consumer_concurrency: parse_or("SAGAFLOW_CONSUMER_CONCURRENCY", 64)?,
            max_concurrent_sends: parse_or("SAGAFLOW_MAX_CONCURRENT_SENDS", 256)?,
            command_timeout: millis_or("SAGAFLOW_COMMAND_TIMEOUT_MS", 5000)?,
            timer_poll: millis_or("SAGAFLOW_TIMER_POLL_MS", 500)?,
        })
    }
}

/// The listen address (`SAGAFLOW_ORCHESTRATOR_LISTEN`).
pub fn listen_addr() -> String {
    config::var_or("SAGAFLOW_ORCHESTRATOR_LISTEN", "127.0.0.1:50051")
}
