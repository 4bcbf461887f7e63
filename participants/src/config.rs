//! Which participant to run, and its settings from the environment.
//!
//! | variable                           | default                                                   |
//! |------------------------------------|-----------------------------------------------------------|
//! | `SAGAFLOW_ORDER_DATABASE_URL`      | `postgres://postgres@127.0.0.1:5432/sagaflow_order`       |
//! | `SAGAFLOW_PAYMENT_DATABASE_URL`    | `postgres://postgres@127.0.0.1:5432/sagaflow_payment`     |
//! | `SAGAFLOW_INVENTORY_DATABASE_URL`  | `postgres://postgres@127.0.0.1:5432/sagaflow_inventory`   |
//! | `SAGAFLOW_ORDER_LISTEN`            | `127.0.0.1:50061`                                         |
//! | `SAGAFLOW_PAYMENT_LISTEN`          | `127.0.0.1:50062`                                         |
//! | `SAGAFLOW_INVENTORY_LISTEN`        | `127.0.0.1:50063`                                         |
//! | `SAGAFLOW_ORDER_HTTP_LISTEN`       | `127.0.0.1:8081`: `/healthz`, `/readyz`, `/metrics` (`off`: none) |
//! | `SAGAFLOW_PAYMENT_HTTP_LISTEN`     | `127.0.0.1:8082`                                          |
//! | `SAGAFLOW_INVENTORY_HTTP_LISTEN`   | `127.0.0.1:8083`                                          |
//! | `SAGAFLOW_DB_POOL_SIZE`            | `16` (1..=1000)                                           |
//! | `SAGAFLOW_INBOX_RETENTION_SECS`    | `1296000` (15 days; 3600..=315360000)                     |
//! | `SAGAFLOW_RETENTION_INTERVAL_SECS` | `3600` (1..=86400)                                        |
//! | `SAGAFLOW_TLS_CERT`, `SAGAFLOW_TLS_KEY` | required: the participant's certificate and key (PEM)  |
//! | `SAGAFLOW_TLS_CLIENT_CA`           | required: CA a client certificate must chain to (PEM)     |
//! | `SAGAFLOW_ALLOWED_CLIENT`          | `sagaflow-orchestrator`: the one client identity accepted |
//! | `SAGAFLOW_INSECURE`                | `false`; `true` serves plaintext to anyone (demo only)    |
//!
//! See docs/security.md for what each check refuses.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use sagaflow_common::config::{self as env, Var, databases};
use sagaflow_common::security::identity::{self, DEFAULT_CLIENT};
use sagaflow_common::security::tls::{self, KeyPair, ServerTls};
use sagaflow_common::security::{self, Required};

/// Every variable a participant reads (beyond
/// [`sagaflow_common::config::COMMON_VARS`]), for `--help`.
pub const VARS: &[Var] = &[
    Var {
        name: "SAGAFLOW_ORDER_DATABASE_URL",
        default: "postgres://postgres@127.0.0.1:5432/sagaflow_order",
        meaning: "the order participant's database (created if missing)",
    },
    Var {
        name: "SAGAFLOW_PAYMENT_DATABASE_URL",
        default: "postgres://postgres@127.0.0.1:5432/sagaflow_payment",
        meaning: "the payment participant's database (created if missing)",
    },
    Var {
        name: "SAGAFLOW_INVENTORY_DATABASE_URL",
        default: "postgres://postgres@127.0.0.1:5432/sagaflow_inventory",
        meaning: "the inventory participant's database (created if missing)",
    },
    Var {
        name: "SAGAFLOW_ORDER_LISTEN",
        default: "127.0.0.1:50061",
        meaning: "where the order participant listens",
    },
    Var {
        name: "SAGAFLOW_PAYMENT_LISTEN",
        default: "127.0.0.1:50062",
        meaning: "where the payment participant listens",
    },
    Var {
        name: "SAGAFLOW_INVENTORY_LISTEN",
        default: "127.0.0.1:50063",
        meaning: "where the inventory participant listens",
    },
    Var {
        name: "SAGAFLOW_ORDER_HTTP_LISTEN",
        default: "127.0.0.1:8081",
        meaning: "the order participant's HTTP address: /healthz, /readyz, /metrics (off: no HTTP server)",
    },
    Var {
        name: "SAGAFLOW_PAYMENT_HTTP_LISTEN",
        default: "127.0.0.1:8082",
        meaning: "the payment participant's HTTP address: /healthz, /readyz, /metrics (off: no HTTP server)",
    },
    Var {
        name: "SAGAFLOW_INVENTORY_HTTP_LISTEN",
        default: "127.0.0.1:8083",
        meaning: "the inventory participant's HTTP address: /healthz, /readyz, /metrics (off: no HTTP server)",
    },
    Var {
        name: "SAGAFLOW_INBOX_RETENTION_SECS",
        default: "1296000",
        meaning: "inbox rows (handled command ids) older than this are deleted; keep it at least the orchestrator's SAGAFLOW_DEDUPE_RETENTION_SECS (3600..=315360000)",
    },
    Var {
        name: "SAGAFLOW_RETENTION_INTERVAL_SECS",
        default: "3600",
        meaning: "how often the inbox retention sweep runs (1..=86400)",
    },
    Var {
        name: "SAGAFLOW_INSECURE",
        default: "false",
        meaning: "true: plaintext, anyone may call (local demos only; warns loudly)",
    },
    Var {
        name: "SAGAFLOW_TLS_CERT",
        default: "required",
        meaning: "the participant's server certificate (chain), PEM",
    },
    Var {
        name: "SAGAFLOW_TLS_KEY",
        default: "required",
        meaning: "its private key, PEM",
    },
    Var {
        name: "SAGAFLOW_TLS_CLIENT_CA",
        default: "required",
        meaning: "CA certificate(s) a client certificate must chain to",
    },
    Var {
        name: "SAGAFLOW_ALLOWED_CLIENT",
        default: "sagaflow-orchestrator",
        meaning: "the one client identity accepted (a DNS name in the client certificate)",
    },
];

const DAY: u64 = 24 * 3600;

/// The three participant services this crate can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Order,
    Payment,
    Inventory,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Order, Kind::Payment, Kind::Inventory];

    /// The participant's name, as in events (`EventEnvelope.participant`),
    /// event types and the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Order => "order",
            Kind::Payment => "payment",
            Kind::Inventory => "inventory",
        }
    }

    /// Name of the participant's database on the default server.
    pub fn default_database(self) -> &'static str {
        match self {
            Kind::Order => databases::ORDER,
            Kind::Payment => databases::PAYMENT,
            Kind::Inventory => databases::INVENTORY,
        }
    }

    /// Where the participant listens unless told otherwise.
    pub fn default_listen(self) -> SocketAddr {
        let port = match self {
            Kind::Order => 50061,
            Kind::Payment => 50062,
            Kind::Inventory => 50063,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Where the participant serves `/healthz`, `/readyz` and `/metrics`
    /// unless told otherwise.
    pub fn default_http_listen(self) -> &'static str {
        match self {
            Kind::Order => "127.0.0.1:8081",
            Kind::Payment => "127.0.0.1:8082",
            Kind::Inventory => "127.0.0.1:8083",
        }
    }

    fn env_prefix(self) -> &'static str {
        match self {
            Kind::Order => "SAGAFLOW_ORDER",
            Kind::Payment => "SAGAFLOW_PAYMENT",
            Kind::Inventory => "SAGAFLOW_INVENTORY",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                anyhow::anyhow!("unknown participant {s:?}: expected order, payment or inventory")
            })
    }
}

/// Settings of one participant process.
#[derive(Debug, Clone)]
pub struct ParticipantConfig {
    /// The participant's own database; it is created if missing and migrated
    /// on start.
    pub database_url: String,
    /// Where the binary binds its gRPC listener ([`crate::serve`] takes an
    /// already bound listener so tests can use port 0).
    pub listen: SocketAddr,
    /// The HTTP address of `/healthz`, `/readyz` and `/metrics`
    /// (`SAGAFLOW_<KIND>_HTTP_LISTEN`); `None`: no HTTP server.
    pub http_listen: Option<String>,
    /// Most connections the pool opens. Each in-flight command holds one for
    /// its transaction, so this bounds concurrent commands against Postgres.
    pub pool_size: usize,
    /// Inbox rows older than this are deleted.
    pub inbox_retention: Duration,
    /// Time between inbox retention sweeps.
    pub retention_interval: Duration,
    /// Who may call it, and over what.
    pub security: Security,
}

/// How a participant's gRPC is protected.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS: the handshake requires a client certificate from the
    /// client CA, and every call of the participant's service must come from
    /// `allowed_client` (gRPC health excepted).
    Mutual {
        tls: ServerTls,
        allowed_client: String,
    },
    /// Plaintext, and anyone may call (`SAGAFLOW_INSECURE=true`).
    Insecure,
}

impl Security {
    /// From `SAGAFLOW_INSECURE`, or the TLS settings it then requires.
    pub fn from_env() -> anyhow::Result<Self> {
        if security::insecure_from_env()? {
            return Ok(Security::Insecure);
        }
        let mut required = Required::new("sagaflow-participant");
        let cert = required.var("SAGAFLOW_TLS_CERT");
        let key = required.var("SAGAFLOW_TLS_KEY");
        let ca = required.var("SAGAFLOW_TLS_CLIENT_CA");
        required.check()?;
        let (cert, key, ca) = (
            cert.unwrap_or_default(),
            key.unwrap_or_default(),
            ca.unwrap_or_default(),
        );
        Ok(Security::Mutual {
            tls: ServerTls {
                identity: KeyPair::read(("SAGAFLOW_TLS_CERT", &cert), ("SAGAFLOW_TLS_KEY", &key))?,
                client_ca_pem: Some(tls::read_pem("SAGAFLOW_TLS_CLIENT_CA", &ca, "CERTIFICATE")?),
            },
            allowed_client: identity::parse_identity(
                "SAGAFLOW_ALLOWED_CLIENT",
                &env::var_or("SAGAFLOW_ALLOWED_CLIENT", DEFAULT_CLIENT),
            )?,
        })
    }
}

impl ParticipantConfig {
    /// Defaults for `kind`, with its database at `database_url`, protected
    /// as `security` says, and no HTTP address (a test's choice; from the
    /// environment it has one by default).
    pub fn new(kind: Kind, database_url: impl Into<String>, security: Security) -> Self {
        Self {
            database_url: database_url.into(),
            listen: kind.default_listen(),
            http_listen: None,
            pool_size: 16,
            inbox_retention: Duration::from_secs(15 * DAY),
            retention_interval: Duration::from_secs(3600),
            security,
        }
    }

    /// Read [`VARS`] for `kind`; unset or empty variables take their
    /// defaults, and a bad value is an error naming its variable and rule.
    pub fn from_env(kind: Kind) -> anyhow::Result<Self> {
        let prefix = kind.env_prefix();
        let default_url = env::default_database_url(kind.default_database());
        Ok(Self {
            database_url: env::var_or(&format!("{prefix}_DATABASE_URL"), &default_url),
            listen: env::parse_or(&format!("{prefix}_LISTEN"), kind.default_listen())?,
            http_listen: sagaflow_common::ops::listen_from_env(
                &format!("{prefix}_HTTP_LISTEN"),
                kind.default_http_listen(),
            ),
            pool_size: env::int_in("SAGAFLOW_DB_POOL_SIZE", 16, 1..=1000)?,
            inbox_retention: env::secs_in(
                "SAGAFLOW_INBOX_RETENTION_SECS",
                15 * DAY,
                3600..=3650 * DAY,
            )?,
            retention_interval: env::secs_in("SAGAFLOW_RETENTION_INTERVAL_SECS", 3600, 1..=DAY)?,
            security: Security::from_env()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_their_names() {
        for kind in Kind::ALL {
            assert_eq!(kind.name().parse::<Kind>().unwrap(), kind);
        }
        assert!("shipping".parse::<Kind>().is_err());
    }

    #[test]
    fn defaults_follow_the_design() {
        let config = ParticipantConfig::new(Kind::Payment, "postgres://x/y", Security::Insecure);
        assert_eq!(config.listen.to_string(), "127.0.0.1:50062");
        assert_eq!(config.pool_size, 16);
        assert_eq!(Kind::Inventory.default_database(), "sagaflow_inventory");
    }
}
