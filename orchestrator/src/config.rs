//! Orchestrator configuration, from environment variables (see the README
//! and, for [`Security`], docs/security.md).

use std::collections::HashMap;
use std::time::Duration;

use sagaflow_common::config::{self, databases, default_database_url, millis_or, parse_or, var_or};
use sagaflow_common::security::tls::{self, ClientTls, KeyPair, ServerTls};
use sagaflow_common::security::{self, Required};

use crate::auth::Tokens;
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
    pub security: Security,
}

/// How the orchestrator listens and calls participants.
#[derive(Debug, Clone)]
pub enum Security {
    Secure(Box<Secured>),
    /// Plaintext both ways and no tokens (`SAGAFLOW_INSECURE=true`).
    Insecure,
}

/// The settings of a secure orchestrator; all required.
#[derive(Debug, Clone)]
pub struct Secured {
    /// The public API's certificate (`SAGAFLOW_TLS_CERT`, `SAGAFLOW_TLS_KEY`).
    pub api_tls: ServerTls,
    /// The public API's bearer tokens.
    pub tokens: Tokens,
    /// The CA participants' certificates chain to (`SAGAFLOW_PARTICIPANT_CA`)
    /// and the orchestrator's client certificate (`SAGAFLOW_CLIENT_CERT`,
    /// `SAGAFLOW_CLIENT_KEY`), whose name participants pin.
    pub participants_tls: ClientTls,
}

impl Security {
    pub fn from_env() -> anyhow::Result<Security> {
        if security::insecure_from_env()? {
            return Ok(Security::Insecure);
        }
        let mut required = Required::new("sagaflow-orchestrator");
        let cert = required.var("SAGAFLOW_TLS_CERT");
        let key = required.var("SAGAFLOW_TLS_KEY");
        let ca = required.var("SAGAFLOW_PARTICIPANT_CA");
        let client_cert = required.var("SAGAFLOW_CLIENT_CERT");
        let client_key = required.var("SAGAFLOW_CLIENT_KEY");
        let tokens = Tokens::from_env(&mut required)?;
        required.check()?;
        let path = |v: Option<String>| v.unwrap_or_default();
        Ok(Security::Secure(Box::new(Secured {
            api_tls: ServerTls {
                identity: KeyPair::read(
                    ("SAGAFLOW_TLS_CERT", &path(cert)),
                    ("SAGAFLOW_TLS_KEY", &path(key)),
                )?,
                client_ca_pem: None,
            },
            tokens,
            participants_tls: ClientTls {
                server_ca_pem: tls::read_pem("SAGAFLOW_PARTICIPANT_CA", &path(ca), "CERTIFICATE")?,
                identity: Some(KeyPair::read(
                    ("SAGAFLOW_CLIENT_CERT", &path(client_cert)),
                    ("SAGAFLOW_CLIENT_KEY", &path(client_key)),
                )?),
            },
        })))
    }

    /// The URL scheme participants are called with.
    pub fn scheme(&self) -> &'static str {
        match self {
            Security::Secure(_) => "https",
            Security::Insecure => "http",
        }
    }
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let security = Security::from_env()?;
        let scheme = security.scheme();
        let mut participants = HashMap::new();
        for (key, var, port) in [
            (order::ORDER, "SAGAFLOW_ORDER_URL", 50061),
            (order::PAYMENT, "SAGAFLOW_PAYMENT_URL", 50062),
            (order::INVENTORY, "SAGAFLOW_INVENTORY_URL", 50063),
        ] {
            let url = var_or(var, &format!("{scheme}://127.0.0.1:{port}"));
            if !url.starts_with(&format!("{scheme}://")) {
                anyhow::bail!(
                    "{var} must be an {scheme}:// URL {}",
                    match security {
                        Security::Secure(_) => "(participants are called over TLS)",
                        Security::Insecure => "in insecure mode",
                    }
                );
            }
            participants.insert(key.to_owned(), url);
        }
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
            security,
        })
    }
}

/// The listen address (`SAGAFLOW_ORCHESTRATOR_LISTEN`).
pub fn listen_addr() -> String {
    config::var_or("SAGAFLOW_ORCHESTRATOR_LISTEN", "127.0.0.1:50051")
}
