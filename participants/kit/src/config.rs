//! A participant's settings from the environment.
//!
//! A participant named `NAME` (say `flight`) reads, with `NAME` upper-cased:
//!
//! | variable                           | default                                                   |
//! |------------------------------------|-----------------------------------------------------------|
//! | `SAGAFLOW_NAME_DATABASE_URL`       | `postgres://postgres@127.0.0.1:5432/sagaflow_name` (created if missing) |
//! | `SAGAFLOW_NAME_LISTEN`             | the participant's [`Defaults::listen`]                    |
//! | `SAGAFLOW_NAME_HTTP_LISTEN`        | [`Defaults::http_listen`]: `/healthz`, `/readyz`, `/metrics` (`off`: none) |
//!
//! and, shared by every participant ([`SHARED_VARS`]):
//!
//! | variable                           | default                                                   |
//! |------------------------------------|-----------------------------------------------------------|
//! | `SAGAFLOW_DB_POOL_SIZE`            | `16` (1..=1000)                                           |
//! | `SAGAFLOW_INBOX_RETENTION_SECS`    | `1296000` (15 days; 3600..=315360000)                     |
//! | `SAGAFLOW_RETENTION_INTERVAL_SECS` | `3600` (1..=86400)                                        |
//! | `SAGAFLOW_TLS_CERT`, `SAGAFLOW_TLS_KEY` | required: the participant's certificate and key (PEM)  |
//! | `SAGAFLOW_TLS_CLIENT_CA`           | required: CA a client certificate must chain to (PEM)     |
//! | `SAGAFLOW_ALLOWED_CLIENT`          | `sagaflow-orchestrator`: the one client identity accepted |
//! | `SAGAFLOW_INSECURE`                | `false`; `true` serves plaintext to anyone (demo only)    |
//!
//! A bad value is an error naming its variable and rule.

use std::net::SocketAddr;
use std::time::Duration;

use sagaflow_common::config::{self as env, Var};
use sagaflow_common::security::identity::{self, DEFAULT_CLIENT};
use sagaflow_common::security::tls::{self, KeyPair, ServerTls};
use sagaflow_common::security::{self, Required};

/// The variables every participant reads besides its own three and
/// [`sagaflow_common::config::COMMON_VARS`] (which has the pool size), for
/// `--help`.
pub const SHARED_VARS: &[Var] = &[
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

/// Where a participant listens unless its environment says otherwise.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// The database name on the local server (`sagaflow_flight`).
    pub database: String,
    /// The gRPC address.
    pub listen: SocketAddr,
    /// The HTTP address of `/healthz`, `/readyz` and `/metrics`; `off` for none.
    pub http_listen: String,
}

impl Defaults {
    /// Database `sagaflow_<name>`, gRPC on `127.0.0.1:<grpc>`, HTTP on
    /// `127.0.0.1:<http>`.
    pub fn local(name: &str, grpc: u16, http: u16) -> Self {
        Self {
            database: format!("sagaflow_{name}"),
            listen: SocketAddr::from(([127, 0, 0, 1], grpc)),
            http_listen: format!("127.0.0.1:{http}"),
        }
    }
}

/// Settings of one participant process.
#[derive(Debug, Clone)]
pub struct Config {
    /// The participant's own database; it is created if missing and migrated
    /// on start.
    pub database_url: String,
    /// Where the binary binds its gRPC listener ([`crate::serve`] takes an
    /// already bound listener so tests can use port 0).
    pub listen: SocketAddr,
    /// The HTTP address of `/healthz`, `/readyz` and `/metrics`
    /// (`SAGAFLOW_<NAME>_HTTP_LISTEN`); `None`: no HTTP server.
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

impl Config {
    /// Defaults, with the database at `database_url`, protected as
    /// `security` says, listening on `127.0.0.1:0` and with no HTTP
    /// address (a test's choice; from the environment it has one by
    /// default).
    pub fn new(database_url: impl Into<String>, security: Security) -> Self {
        Self {
            database_url: database_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: None,
            pool_size: 16,
            inbox_retention: Duration::from_secs(15 * DAY),
            retention_interval: Duration::from_secs(3600),
            security,
        }
    }

    /// Read the settings of participant `name` (see the module docs);
    /// unset or empty variables take their defaults.
    pub fn from_env(name: &str, defaults: &Defaults) -> anyhow::Result<Self> {
        let prefix = env_prefix(name);
        let default_url = env::default_database_url(&defaults.database);
        Ok(Self {
            database_url: env::var_or(&format!("{prefix}_DATABASE_URL"), &default_url),
            listen: env::parse_or(&format!("{prefix}_LISTEN"), defaults.listen)?,
            http_listen: sagaflow_common::ops::listen_from_env(
                &format!("{prefix}_HTTP_LISTEN"),
                &defaults.http_listen,
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

/// `SAGAFLOW_<NAME>`: the prefix of participant `name`'s own variables
/// (`-` becomes `_`).
pub fn env_prefix(name: &str) -> String {
    format!("SAGAFLOW_{}", name.to_ascii_uppercase().replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_name() {
        let d = Defaults::local("flight", 50064, 8091);
        assert_eq!(d.database, "sagaflow_flight");
        assert_eq!(d.listen.to_string(), "127.0.0.1:50064");
        assert_eq!(env_prefix("car-rental"), "SAGAFLOW_CAR_RENTAL");
        let config = Config::new("postgres://x/y", Security::Insecure);
        assert_eq!(config.pool_size, 16);
        assert_eq!(config.inbox_retention, Duration::from_secs(15 * DAY));
    }
}
