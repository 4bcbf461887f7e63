//! Configuration from environment variables. Every variable is listed in the
//! README; defaults suit a local Postgres at 127.0.0.1:5432 with trust auth.

use std::time::Duration;

/// The variable's value, or `default` when unset or empty.
pub fn var_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// The variable's value when set and non-empty.
pub fn var_opt(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A parsed variable, or `default`; a value that does not parse is an error
/// naming the variable.
pub fn parse_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match var_opt(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={v:?} is invalid: {e}")),
    }
}

/// A duration in milliseconds.
pub fn millis_or(name: &str, default_ms: u64) -> anyhow::Result<Duration> {
    parse_or(name, default_ms).map(Duration::from_millis)
}

/// Default database url for a service database on the local server.
pub fn default_database_url(db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{db}")
}

/// Names of the default databases.
pub mod databases {
    pub const ORCHESTRATOR: &str = "sagaflow_orchestrator";
    pub const ORDER: &str = "sagaflow_order";
    pub const PAYMENT: &str = "sagaflow_payment";
    pub const INVENTORY: &str = "sagaflow_inventory";
}
