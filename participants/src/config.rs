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
//!
//! The trip saga's four (`flight`, `hotel`, `car`, `trip`) read the same
//! three variables under their own names: `SAGAFLOW_FLIGHT_DATABASE_URL`
//! (default database `sagaflow_flight`), `SAGAFLOW_FLIGHT_LISTEN`
//! (`127.0.0.1:50064`; hotel 50065, car 50066, trip 50067) and
//! `SAGAFLOW_FLIGHT_HTTP_LISTEN` (`127.0.0.1:8091`; 8092, 8093, 8094);
//! [`VARS`] lists them all,
//! and the settings every participant shares
//! ([`sagaflow_participant_kit::config`]).
//!
//! See docs/security.md for what each check refuses.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use sagaflow_common::config::{Var, databases};
use sagaflow_participant_kit::{Config, Defaults, Security};

/// The variables of each participant this binary runs (beyond
/// [`sagaflow_common::config::COMMON_VARS`] and
/// [`sagaflow_participant_kit::config::SHARED_VARS`]), for `--help`.
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
        name: "SAGAFLOW_FLIGHT_DATABASE_URL",
        default: "postgres://postgres@127.0.0.1:5432/sagaflow_flight",
        meaning: "the flight participant's database (created if missing)",
    },
    Var {
        name: "SAGAFLOW_FLIGHT_LISTEN",
        default: "127.0.0.1:50064",
        meaning: "where the flight participant listens",
    },
    Var {
        name: "SAGAFLOW_FLIGHT_HTTP_LISTEN",
        default: "127.0.0.1:8091",
        meaning: "the flight participant's HTTP address: /healthz, /readyz, /metrics (off: no HTTP server)",
    },
    Var {
        name: "SAGAFLOW_HOTEL_DATABASE_URL",
        default: "postgres://postgres@127.0.0.1:5432/sagaflow_hotel",
        meaning: "the hotel participant's database (created if missing)",
    },
    Var {
        name: "SAGAFLOW_HOTEL_LISTEN",
        default: "127.0.0.1:50065",
        meaning: "where the hotel participant listens",
    },
    Var {
        name: "SAGAFLOW_HOTEL_HTTP_LISTEN",
        default: "127.0.0.1:8092",
        meaning: "the hotel participant's HTTP address: /healthz, /readyz, /metrics (off: no HTTP server)",
    },
    Var {
        name: "SAGAFLOW_CAR_DATABASE_URL",
        default: "postgres://postgres@127.0.0.1:5432/sagaflow_car",
        meaning: "the car participant's database (created if missing)",
    },
    Var {
        name: "SAGAFLOW_CAR_LISTEN",
        default: "127.0.0.1:50066",
        meaning: "where the car participant listens",
    },
    Var {
        name: "SAGAFLOW_CAR_HTTP_LISTEN",
        default: "127.0.0.1:8093",
        meaning: "the car participant's HTTP address: /healthz, /readyz, /metrics (off: no HTTP server)",
    },
    Var {
        name: "SAGAFLOW_TRIP_DATABASE_URL",
        default: "postgres://postgres@127.0.0.1:5432/sagaflow_trip",
        meaning: "the trip participant's database (created if missing)",
    },
    Var {
        name: "SAGAFLOW_TRIP_LISTEN",
        default: "127.0.0.1:50067",
        meaning: "where the trip participant listens",
    },
    Var {
        name: "SAGAFLOW_TRIP_HTTP_LISTEN",
        default: "127.0.0.1:8094",
        meaning: "the trip participant's HTTP address: /healthz, /readyz, /metrics (off: no HTTP server)",
    },
];

/// The participant services this crate can run: the order saga's three,
/// and the trip saga's four ([`crate::trip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Order,
    Payment,
    Inventory,
    Flight,
    Hotel,
    Car,
    Trip,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Order,
        Kind::Payment,
        Kind::Inventory,
        Kind::Flight,
        Kind::Hotel,
        Kind::Car,
        Kind::Trip,
    ];

    /// The participant's name, as in events (`EventEnvelope.participant`),
    /// event types and the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Order => "order",
            Kind::Payment => "payment",
            Kind::Inventory => "inventory",
            Kind::Flight => "flight",
            Kind::Hotel => "hotel",
            Kind::Car => "car",
            Kind::Trip => "trip",
        }
    }

    /// Name of the participant's database on the default server.
    pub fn default_database(self) -> &'static str {
        match self {
            Kind::Order => databases::ORDER,
            Kind::Payment => databases::PAYMENT,
            Kind::Inventory => databases::INVENTORY,
            Kind::Flight => "sagaflow_flight",
            Kind::Hotel => "sagaflow_hotel",
            Kind::Car => "sagaflow_car",
            Kind::Trip => "sagaflow_trip",
        }
    }

    /// Where the participant listens unless told otherwise.
    pub fn default_listen(self) -> SocketAddr {
        let port = match self {
            Kind::Order => 50061,
            Kind::Payment => 50062,
            Kind::Inventory => 50063,
            Kind::Flight => 50064,
            Kind::Hotel => 50065,
            Kind::Car => 50066,
            Kind::Trip => 50067,
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
            Kind::Flight => "127.0.0.1:8091",
            Kind::Hotel => "127.0.0.1:8092",
            Kind::Car => "127.0.0.1:8093",
            Kind::Trip => "127.0.0.1:8094",
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
                anyhow::anyhow!(
                    "unknown participant {s:?}: expected order, payment, inventory, flight, hotel, car or trip"
                )
            })
    }
}

impl Kind {
    /// Its settings from the environment (`SAGAFLOW_<KIND>_*` and the
    /// shared ones).
    pub fn config_from_env(self) -> anyhow::Result<Config> {
        Config::from_env(self.name(), &self.defaults())
    }

    /// Its default settings with its database at `database_url`, protected
    /// as `security` says (a test's choice: no HTTP address).
    pub fn config(self, database_url: impl Into<String>, security: Security) -> Config {
        Config {
            listen: self.default_listen(),
            ..Config::new(database_url, security)
        }
    }

    /// Where it listens and keeps its data unless told otherwise.
    pub fn defaults(self) -> Defaults {
        Defaults {
            database: self.default_database().to_owned(),
            listen: self.default_listen(),
            http_listen: self.default_http_listen().to_owned(),
        }
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
        let config = Kind::Payment.config("postgres://x/y", Security::Insecure);
        assert_eq!(config.listen.to_string(), "127.0.0.1:50062");
        assert_eq!(config.pool_size, 16);
        assert_eq!(Kind::Inventory.default_database(), "sagaflow_inventory");
    }
}
