//! Orchestrator configuration, from environment variables ([`VARS`], also
//! in docs/settings.md and `sagaflow-orchestrator --help`; [`Security`] in
//! docs/security.md). Every value is checked when read: a bad one stops the
//! process with a message naming it.

use std::collections::HashMap;
use std::time::Duration;

use sagaflow_common::config::{
    self, Var, bool_or, databases, default_database_url, int_in, millis_in, secs_in, var_opt,
    var_or,
};
use sagaflow_common::security::tls::{self, ClientTls, KeyPair, ServerTls};
use sagaflow_common::security::{self, Required};

use crate::auth::Tokens;
use crate::definitions::order;
use crate::driver::Limits;
use crate::retention::Retention;

/// Every variable the orchestrator reads (beyond [`sagaflow_common::config::COMMON_VARS`]).
pub const VARS: &[Var] = &[
    Var {
        name: "SAGAFLOW_ORCHESTRATOR_LISTEN",
        default: "127.0.0.1:50051",
        meaning: "gRPC listen address (gRPC, and gRPC-Web over HTTP/1.1 for browsers)",
    },
    Var {
        name: "SAGAFLOW_ORCHESTRATOR_HTTP_LISTEN",
        default: "127.0.0.1:8080",
        meaning: "HTTP address: the web console, /config.json, /healthz, /readyz and /metrics (off: no HTTP server)",
    },
    Var {
        name: "SAGAFLOW_CONSOLE_DIR",
        default: "console/dist (from the working directory, else next to the binary's build tree)",
        meaning: "the built web console served on the HTTP address",
    },
    Var {
        name: "SAGAFLOW_CONSOLE_API_URL",
        default: "the gRPC address, as reached by the browser's host name",
        meaning: "the API URL the console calls (gRPC-Web)",
    },
    Var {
        name: "SAGAFLOW_CORS_ALLOWED_ORIGINS",
        default: "the console's own origins (http://127.0.0.1:PORT, http://localhost:PORT, the HTTP address)",
        meaning: "comma-separated browser origins allowed to call the API with gRPC-Web; `*` for any",
    },
    Var {
        name: "SAGAFLOW_JAEGER_UI_URL",
        default: "(unset: no trace links)",
        meaning: "Jaeger's UI; the console links each saga's trace id there",
    },
    Var {
        name: "SAGAFLOW_WATCH_POOL_SIZE",
        default: "4",
        meaning: "database connections for WatchSaga/WatchSagas reads, apart from the engine's pool (1..=1000)",
    },
    Var {
        name: "SAGAFLOW_WATCH_BUFFER",
        default: "64",
        meaning: "messages queued per WatchSaga/WatchSagas stream before its client counts as too slow and is told to resume (1..=100000)",
    },
    Var {
        name: "SAGAFLOW_ORCHESTRATOR_DATABASE_URL",
        default: "postgres://postgres@127.0.0.1:5432/sagaflow_orchestrator",
        meaning: "its database (created if missing)",
    },
    Var {
        name: "SAGAFLOW_DEFINITIONS_DIR",
        default: "unset: the built-in order saga",
        meaning: "directory of saga definition files (*.yaml, *.yml), loaded and checked at start",
    },
    Var {
        name: "SAGAFLOW_PARTICIPANT_<KEY>_URL",
        default: "unset",
        meaning: "the participant a definition names by <key> (SAGAFLOW_PARTICIPANT_SHIPPING_URL for shipping; http:// in insecure mode)",
    },
    Var {
        name: "SAGAFLOW_ORDER_URL",
        default: "https://127.0.0.1:50061",
        meaning: "the order participant (http:// in insecure mode); alias of SAGAFLOW_PARTICIPANT_ORDER_URL",
    },
    Var {
        name: "SAGAFLOW_PAYMENT_URL",
        default: "https://127.0.0.1:50062",
        meaning: "the payment participant (http:// in insecure mode); alias of SAGAFLOW_PARTICIPANT_PAYMENT_URL",
    },
    Var {
        name: "SAGAFLOW_INVENTORY_URL",
        default: "https://127.0.0.1:50063",
        meaning: "the inventory participant (http:// in insecure mode); alias of SAGAFLOW_PARTICIPANT_INVENTORY_URL",
    },
    Var {
        name: "SAGAFLOW_INSECURE",
        default: "false",
        meaning: "true: plaintext API without tokens, plaintext to participants (local demos only; warns loudly)",
    },
    Var {
        name: "SAGAFLOW_TLS_CERT",
        default: "required",
        meaning: "the public API's server certificate, PEM",
    },
    Var {
        name: "SAGAFLOW_TLS_KEY",
        default: "required",
        meaning: "its private key, PEM",
    },
    Var {
        name: "SAGAFLOW_PARTICIPANT_CA",
        default: "required",
        meaning: "CA participants' server certificates must chain to",
    },
    Var {
        name: "SAGAFLOW_CLIENT_CERT",
        default: "required",
        meaning: "the orchestrator's client certificate for participants; its DNS name is the identity they pin",
    },
    Var {
        name: "SAGAFLOW_CLIENT_KEY",
        default: "required",
        meaning: "its private key",
    },
    Var {
        name: "SAGAFLOW_API_TOKENS",
        default: "required (or _FILE)",
        meaning: "client bearer tokens, comma-separated",
    },
    Var {
        name: "SAGAFLOW_API_TOKENS_FILE",
        default: "unset",
        meaning: "client bearer tokens, one per line",
    },
    Var {
        name: "SAGAFLOW_OPERATOR_TOKENS",
        default: "required (or _FILE)",
        meaning: "operator bearer tokens, comma-separated",
    },
    Var {
        name: "SAGAFLOW_OPERATOR_TOKENS_FILE",
        default: "unset",
        meaning: "operator bearer tokens, one per line",
    },
    Var {
        name: "SAGAFLOW_API_URL",
        default: "https:// + the listen address",
        meaning: "the `sagaflow` command (run beside the orchestrator): the orchestrator to call",
    },
    Var {
        name: "SAGAFLOW_API_CA",
        default: "required",
        meaning: "the `sagaflow` command (run beside the orchestrator): the CA of the API's certificate",
    },
    Var {
        name: "SAGAFLOW_API_TOKEN",
        default: "required (or _FILE)",
        meaning: "the `sagaflow` command (run beside the orchestrator): one operator token",
    },
    Var {
        name: "SAGAFLOW_API_TOKEN_FILE",
        default: "unset",
        meaning: "the `sagaflow` command (run beside the orchestrator): the operator token, in a file",
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
        name: "SAGAFLOW_FAST_PATH",
        default: "true",
        meaning: "apply the outcome in a participant's reply at once (false: only events from Pub/Sub)",
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
        name: "SAGAFLOW_PLACEMENT_CHECK_CACHE_MS",
        default: "10000",
        meaning: "how long a customer or item a placement check found is not asked for again (0..=3600000; 0: always ask)",
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
];

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    /// The HTTP address (console, `/config.json`, `/healthz`, `/readyz`,
    /// `/metrics`); `None`: no HTTP server.
    pub http_listen: Option<String>,
    pub console: crate::http::ConsoleSettings,
    /// Browser origins allowed to call the API (`None`: any).
    pub cors_origins: Option<Vec<String>>,
    /// Messages queued per watcher.
    pub watch_buffer: usize,
    /// Database connections for watchers' reads (apart from the engine's).
    pub watch_pool_size: usize,
    pub database_url: String,
    pub pool_size: usize,
    /// Participant key → gRPC URL.
    pub participants: HashMap<String, String>,
    /// Where the saga definitions are (`None`: the built-in order saga).
    pub definitions_dir: Option<std::path::PathBuf>,
    pub events_topic: String,
    pub events_subscription: String,
    /// Ask Pub/Sub for per-saga ordering (correctness never depends on it).
    pub subscription_ordering: bool,
    pub subscriber_streams: usize,
    pub consumer_concurrency: usize,
    pub sends: Limits,
    pub command_timeout: Duration,
    pub placement_check_timeout: Duration,
    /// How long a customer or item found by a placement check is not asked
    /// for again (zero: always ask).
    pub placement_check_cache: Duration,
    /// Where poison messages go, and its subscription (drained into the
    /// `dead_letters` table).
    pub dead_letter_topic: String,
    pub dead_letter_subscription: String,
    /// Deliveries before Pub/Sub forwards a message to the dead-letter topic
    /// (5..=100).
    pub max_delivery_attempts: i32,
    pub timer_poll: Duration,
    pub retention: Retention,
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

/// The variable that names participant `key`'s endpoint.
pub fn participant_var(key: &str) -> String {
    format!("SAGAFLOW_PARTICIPANT_{}_URL", key.to_ascii_uppercase())
}

impl Config {
    /// Read and check every setting; the error names the first bad one.
    pub fn from_env() -> anyhow::Result<Self> {
        order::check_env()?;
        let security = Security::from_env()?;
        let scheme = security.scheme();
        let mut participants = HashMap::new();
        let mut endpoints: Vec<(String, String, String)> = Vec::new();
        for (key, alias, port) in [
            (order::ORDER, "SAGAFLOW_ORDER_URL", 50061),
            (order::PAYMENT, "SAGAFLOW_PAYMENT_URL", 50062),
            (order::INVENTORY, "SAGAFLOW_INVENTORY_URL", 50063),
        ] {
            let var = participant_var(key);
            let url = match (var_opt(&var), var_opt(alias)) {
                (Some(a), Some(b)) if a != b => anyhow::bail!(
                    "{var}={a:?} and its alias {alias}={b:?} disagree: set one of them"
                ),
                (Some(url), _) => (var, url),
                (None, Some(url)) => (alias.to_owned(), url),
                (None, None) => (var, format!("{scheme}://127.0.0.1:{port}")),
            };
            endpoints.push((key.to_owned(), url.0, url.1));
        }
        // Any other participant a definition names.
        for (name, value) in std::env::vars() {
            let Some(key) = name
                .strip_prefix("SAGAFLOW_PARTICIPANT_")
                .and_then(|k| k.strip_suffix("_URL"))
            else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if key.is_empty() || endpoints.iter().any(|(k, _, _)| *k == key) {
                continue;
            }
            if !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                anyhow::bail!("{name}: the key must be letters, digits and _");
            }
            endpoints.push((key, name, value.trim().to_owned()));
        }
        for (key, var, url) in endpoints {
            if !url.starts_with(&format!("{scheme}://")) {
                anyhow::bail!(
                    "{var} must be an {scheme}:// URL {}",
                    match security {
                        Security::Secure(_) => "(participants are called over TLS)",
                        Security::Insecure => "in insecure mode",
                    }
                );
            }
            participants.insert(key, url);
        }
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
        let listen = var_or("SAGAFLOW_ORCHESTRATOR_LISTEN", "127.0.0.1:50051");
        let http_listen = sagaflow_common::ops::listen_from_env(
            "SAGAFLOW_ORCHESTRATOR_HTTP_LISTEN",
            "127.0.0.1:8080",
        );
        let console = crate::http::ConsoleSettings::from_env(&listen, &security)?;
        let cors_origins = crate::http::cors_origins_from_env(http_listen.as_deref())?;
        Ok(Config {
            listen: listen.clone(),
            http_listen,
            console,
            cors_origins,
            watch_buffer: int_in("SAGAFLOW_WATCH_BUFFER", 64, 1..=100_000)?,
            watch_pool_size: int_in("SAGAFLOW_WATCH_POOL_SIZE", 4, 1..=1000)?,
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
            definitions_dir: var_opt("SAGAFLOW_DEFINITIONS_DIR").map(std::path::PathBuf::from),
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
                apply_replies: bool_or("SAGAFLOW_FAST_PATH", true)?,
            },
            command_timeout: millis_in("SAGAFLOW_COMMAND_TIMEOUT_MS", 5000, 1..=3_600_000)?,
            placement_check_timeout: millis_in(
                "SAGAFLOW_PLACEMENT_CHECK_TIMEOUT_MS",
                1000,
                1..=60_000,
            )?,
            placement_check_cache: millis_in(
                "SAGAFLOW_PLACEMENT_CHECK_CACHE_MS",
                10_000,
                0..=3_600_000,
            )?,
            timer_poll: millis_in("SAGAFLOW_TIMER_POLL_MS", 500, 10..=3_600_000)?,
            retention,
            security,
        })
    }
}

/// The listen address (`SAGAFLOW_ORCHESTRATOR_LISTEN`), for commands that
/// call the API without reading the whole configuration.
pub fn listen_addr() -> String {
    config::var_or("SAGAFLOW_ORCHESTRATOR_LISTEN", "127.0.0.1:50051")
}

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
