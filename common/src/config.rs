//! Configuration from environment variables. Every variable is listed in
//! docs/settings.md; defaults suit a local Postgres at 127.0.0.1:5432 with trust auth.
//!
//! Every numeric setting is read with its rule ([`int_in`], [`millis_in`],
//! [`secs_in`]): a value that does not parse, or falls outside its range,
//! is an error that names the variable and the rule, and the binary refuses
//! to start. No setting can be zero where zero would wedge (a semaphore
//! with no permits) or overflow where it is added to a time.
//!
//! Each binary lists the variables it reads as [`Var`]s for its `--help`
//! ([`usage`]), and refuses flags it does not know ([`Args`]).

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;
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

/// An integer setting within `range`, or `default` when unset.
pub fn int_in<T>(name: &str, default: T, range: RangeInclusive<T>) -> anyhow::Result<T>
where
    T: FromStr + PartialOrd + Display + Copy,
    T::Err: Display,
{
    let Some(raw) = var_opt(name) else {
        return Ok(default);
    };
    check_in(name, &raw, range)
}

/// `raw` parsed and within `range`, or an error naming `name` and the rule.
pub fn check_in<T>(name: &str, raw: &str, range: RangeInclusive<T>) -> anyhow::Result<T>
where
    T: FromStr + PartialOrd + Display + Copy,
    T::Err: Display,
{
    let rule = format!("an integer within {}..={}", range.start(), range.end());
    match raw.trim().parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(v),
        Ok(_) => anyhow::bail!("{name}={} is invalid: must be {rule}", quote(raw)),
        Err(e) => anyhow::bail!("{name}={} is invalid ({e}): must be {rule}", quote(raw)),
    }
}

/// A duration in milliseconds within `range` (ms).
pub fn millis_in(
    name: &str,
    default_ms: u64,
    range: RangeInclusive<u64>,
) -> anyhow::Result<Duration> {
    int_in(name, default_ms, range).map(Duration::from_millis)
}

/// A duration in seconds within `range` (s).
pub fn secs_in(name: &str, default_s: u64, range: RangeInclusive<u64>) -> anyhow::Result<Duration> {
    int_in(name, default_s, range).map(Duration::from_secs)
}

/// A boolean setting: `true`/`false` (also `1`/`0`, `yes`/`no`).
pub fn bool_or(name: &str, default: bool) -> anyhow::Result<bool> {
    match var_opt(name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => anyhow::bail!("{name}={} is invalid: must be true or false", quote(&v)),
        },
    }
}

/// A value quoted for an error message, cut short if long.
fn quote(raw: &str) -> String {
    match raw.char_indices().nth(40) {
        Some((i, _)) => format!("{:?}…", &raw[..i]),
        None => format!("{raw:?}"),
    }
}

/// One environment variable a binary reads, for its `--help`.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Variables every binary reads.
pub const COMMON_VARS: &[Var] = &[
    Var {
        name: "PUBSUB_EMULATOR_HOST",
        default: "unset",
        meaning: "host:port of a Pub/Sub emulator; unset means real Pub/Sub with Application Default Credentials",
    },
    Var {
        name: "SAGAFLOW_PUBSUB_PROJECT",
        default: "sagaflow-local",
        meaning: "Google Cloud project of the topics and subscriptions",
    },
    Var {
        name: "SAGAFLOW_DB_POOL_SIZE",
        default: "16",
        meaning: "Postgres connections per pool (1..=1000)",
    },
    Var {
        name: "RUST_LOG",
        default: "info",
        meaning: "log filter",
    },
    Var {
        name: "SAGAFLOW_LOG_FORMAT",
        default: "text",
        meaning: "text or json",
    },
    Var {
        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
        default: "unset",
        meaning: "OTLP/gRPC endpoint for traces; unset exports nothing",
    },
];

/// The `--help` text: the synopsis, then every variable with its default.
pub fn usage(synopsis: &str, vars: &[&[Var]]) -> String {
    let mut out = format!("{synopsis}\n\nEnvironment variables (default in brackets):\n");
    for v in vars.iter().flat_map(|v| v.iter()) {
        out.push_str(&format!(
            "  {} [{}]\n      {}\n",
            v.name, v.default, v.meaning
        ));
    }
    out
}

/// A binary's command line: `--help`/`-h` anywhere asks for the usage; any
/// other flag is an error (so a typo never starts a service).
#[derive(Debug, PartialEq, Eq)]
pub enum Args {
    Help,
    Run(Vec<String>),
}

impl Args {
    /// Parse the words after the program name.
    pub fn parse(words: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let words: Vec<String> = words.into_iter().collect();
        if words.iter().any(|w| w == "--help" || w == "-h") {
            return Ok(Args::Help);
        }
        if let Some(flag) = words.iter().find(|w| w.starts_with('-')) {
            return Err(format!("unknown option {}", quote(flag)));
        }
        Ok(Args::Run(words))
    }

    /// The process's own arguments; on `--help` prints `help` and exits 0,
    /// on an unknown flag prints the error and the usage and exits 2.
    pub fn from_env_or_exit(help: &str) -> Vec<String> {
        match Args::parse(std::env::args().skip(1)) {
            Ok(Args::Run(words)) => words,
            Ok(Args::Help) => {
                print!("{help}");
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("{e}\n\n{help}");
                std::process::exit(2);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_outside_their_range_name_the_variable_and_the_rule() {
        let e = check_in("SAGAFLOW_X", "0", 1..=10u32)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "SAGAFLOW_X=\"0\" is invalid: must be an integer within 1..=10"
        );
        let e = check_in("SAGAFLOW_X", "-1", 1..=10usize)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("SAGAFLOW_X=\"-1\" is invalid ("), "{e}");
        assert!(e.ends_with("must be an integer within 1..=10"), "{e}");
        let e = check_in("SAGAFLOW_X", &"9".repeat(1000), 1..=10u64)
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200, "{e}");
        assert_eq!(check_in("SAGAFLOW_X", " 7 ", 1..=10u8).unwrap(), 7);
    }

    #[test]
    fn flags_are_help_or_errors() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Args::parse(words(&["--help"])), Ok(Args::Help));
        assert_eq!(Args::parse(words(&["order", "-h"])), Ok(Args::Help));
        assert_eq!(
            Args::parse(words(&["order"])),
            Ok(Args::Run(words(&["order"])))
        );
        assert!(Args::parse(words(&["--port=1"])).is_err());
        assert!(Args::parse(words(&["order", "-x"])).is_err());
    }

    #[test]
    fn usage_lists_every_variable_with_its_default() {
        let text = usage("usage: x", &[COMMON_VARS]);
        for v in COMMON_VARS {
            assert!(
                text.contains(v.name) && text.contains(v.meaning),
                "{}",
                v.name
            );
        }
    }
}
