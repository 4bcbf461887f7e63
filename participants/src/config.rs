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
//! | `SAGAFLOW_DB_POOL_SIZE`            | `16`                                                      |
//! | `SAGAFLOW_TLS_CERT`, `SAGAFLOW_TLS_KEY` | required: the participant's certificate and key (PEM)  |
//! | `SAGAFLOW_TLS_CLIENT_CA`           | required: CA a client certificate must chain to (PEM)     |
//! | `SAGAFLOW_ALLOWED_CLIENT`          | `sagaflow-orchestrator`: the one client identity accepted |
//! | `SAGAFLOW_INSECURE`                | `false`; `true` serves plaintext to anyone (demo only)    |
//!
//! See docs/security.md for what each check refuses.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use sagaflow_common::config::{self as env, databases};
use sagaflow_common::security::identity::{self, DEFAULT_CLIENT};
use sagaflow_common::security::tls::{self, KeyPair, ServerTls};
use sagaflow_common::security::{self, Required};

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
    /// Most connections the pool opens. Each in-flight command holds one for
    /// its transaction, so this bounds concurrent commands against Postgres.
    pub pool_size: usize,
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
    /// as `security` says.
    pub fn new(kind: Kind, database_url: impl Into<String>, security: Security) -> Self {
        Self {
            database_url: database_url.into(),
            listen: kind.default_listen(),
            pool_size: 16,
            security,
        }
    }

    /// Read `SAGAFLOW_<KIND>_DATABASE_URL`, `SAGAFLOW_<KIND>_LISTEN`,
    /// `SAGAFLOW_DB_POOL_SIZE` (unset or empty variables take their
    /// defaults) and the security settings ([`Security::from_env`]).
    pub fn from_env(kind: Kind) -> anyhow::Result<Self> {
        let prefix = kind.env_prefix();
        let default_url = env::default_database_url(kind.default_database());
        let pool_size: usize = env::parse_or("SAGAFLOW_DB_POOL_SIZE", 16)?;
        anyhow::ensure!(pool_size > 0, "SAGAFLOW_DB_POOL_SIZE must be at least 1");
        Ok(Self {
            database_url: env::var_or(&format!("{prefix}_DATABASE_URL"), &default_url),
            listen: env::parse_or(&format!("{prefix}_LISTEN"), kind.default_listen())?,
            pool_size,
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
