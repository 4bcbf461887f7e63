//! The command line, as clap derives it. Every global flag can also come
//! from the environment, with the names the other Sagaflow binaries use.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sagaflow_protos::participant::v1::OrderItem;

/// What the process exit status means; shown at the end of `--help`.
pub const EXIT_CODES: &str = "\
Exit status:
  0  success; for `watch`, the saga COMPLETED
  1  an error: bad input, the orchestrator unreachable, a refusal (CODE: message)
  2  `watch`: the saga was COMPENSATED (turned back)
  3  `watch`: the saga is COMPENSATION_FAILED (an undo was refused; an operator must act);
     `reconcile`: mismatches found
  4  `watch`: the saga is SUSPENDED (the engine stopped it; an operator must act)";

/// `sagaflow`: place, inspect, watch and operate sagas through a running
/// orchestrator's API.
#[derive(Debug, Parser)]
#[command(
    name = "sagaflow",
    version,
    after_help = EXIT_CODES,
    after_long_help = format!("{EXIT_CODES}\n\nSee docs/cli.md."),
)]
pub struct Cli {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Machine output: one JSON document per command (for `watch`, one JSON
    /// object per line per entry, then one with the final state).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Where and how to call the API.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The orchestrator's API [default: https:// (http:// when insecure) +
    /// SAGAFLOW_ORCHESTRATOR_LISTEN, 127.0.0.1:50051 unless set]
    #[arg(
        long,
        global = true,
        env = "SAGAFLOW_API_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub endpoint: Option<String>,
    /// An API token (a client token; operator actions need an operator
    /// token). Prefer --token-file: other processes can read arguments and
    /// the environment.
    #[arg(
        long,
        global = true,
        env = "SAGAFLOW_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// A file holding the API token.
    #[arg(
        long,
        global = true,
        env = "SAGAFLOW_API_TOKEN_FILE",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) the API's certificate must chain to.
    #[arg(
        long,
        global = true,
        env = "SAGAFLOW_API_CA",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub ca: Option<PathBuf>,
    /// Call the API in plaintext without a token (a local demo or benchmark
    /// run with SAGAFLOW_INSECURE=true) [env: SAGAFLOW_INSECURE=true]
    // Read from the environment by `connect`, as every binary reads it
    // (empty is unset, anything but true/false an error naming it).
    #[arg(long, global = true)]
    pub insecure: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Place an order: prints the saga id, whether this call created it, and its state.
    Place(Place),
    /// Start a saga of any defined type with its input as JSON: prints the
    /// saga id, whether this call created it, and its state.
    Start {
        /// The saga type (`sagaflow definitions` lists them).
        saga_type: String,
        /// The input, a JSON document; `@FILE` reads it from a file, `-`
        /// from standard input.
        input: String,
        /// Repeat a start safely with the same key [default: a fresh UUID].
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// One saga: its state, reason, steps and history.
    Get { saga_id: String },
    /// Sagas, newest first, a page at a time.
    List(List),
    /// Follow one saga live until it ends: each history entry as it
    /// commits. Exits 0 when it COMPLETED, 2 COMPENSATED, 3
    /// COMPENSATION_FAILED, 4 SUSPENDED.
    Watch(Watch),
    /// Operator: resume a COMPENSATION_FAILED or SUSPENDED saga.
    Retry {
        saga_id: String,
        /// Why (kept in the saga's history).
        #[arg(long)]
        reason: Option<String>,
        /// An idempotency key: the same id again is not a second retry.
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
    },
    /// Operator: turn a RUNNING or SUSPENDED saga back.
    Cancel {
        saga_id: String,
        /// Why (becomes the saga's reason).
        #[arg(long)]
        reason: String,
        /// An idempotency key: the same id again is not a second cancel.
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
    },
    /// The saga definitions stored (every version any instance runs); with
    /// a type, that type's newest version (or --version N) step by step.
    Definitions {
        saga_type: Option<String>,
        /// This version of the type [default: the newest].
        #[arg(long, value_name = "N", default_value_t = 0, requires = "saga_type")]
        version: u32,
    },
    /// Operator: events the orchestrator could not apply.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// Operator: compare finished sagas with what their participants did.
    /// Reads the orchestrator's own settings (its database, participant
    /// endpoints and their TLS), not the API flags; exits 3 on mismatches.
    Reconcile {
        /// These sagas only (then every step is shown); none: every finished saga.
        saga_ids: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct Place {
    #[arg(long)]
    pub customer: String,
    /// A line of the order, SKU:QUANTITY (repeat for more lines).
    #[arg(long = "item", value_name = "SKU:QTY", value_parser = parse_item, required = true)]
    pub items: Vec<OrderItem>,
    /// The amount in major units (12.50), exactly: no more decimals than
    /// the currency has.
    #[arg(long)]
    pub amount: String,
    /// ISO 4217 code.
    #[arg(long, default_value = "EUR")]
    pub currency: String,
    /// Repeat a placement safely with the same key [default: a fresh UUID].
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct List {
    /// Only sagas in this state (repeat for several): running,
    /// compensating, completed, compensated, compensation_failed, suspended.
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<i32>,
    /// Sagas per page, 1..500 [default: 50].
    #[arg(long, value_name = "N")]
    pub page_size: Option<u32>,
    /// The next-page token a previous `list` printed.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
}

#[derive(Debug, Args)]
pub struct Watch {
    pub saga_id: String,
    /// Give up when the orchestrator cannot be reached again for this long
    /// (seconds) after a stream broke.
    #[arg(long, value_name = "SECONDS", default_value = "120", value_parser = parse_seconds)]
    pub reconnect_for: Duration,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetters {
    /// The newest dead letters and how many there are.
    List {
        /// How many to show, 1..500.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Re-publish dead letters to the events topic.
    Redrive {
        /// Every dead letter not re-driven yet.
        #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
        all: bool,
        /// These dead letters.
        #[arg(value_name = "ID")]
        ids: Vec<i64>,
    },
}

/// `sku:qty`; the last colon splits, so a SKU may contain colons.
fn parse_item(raw: &str) -> Result<OrderItem, String> {
    let (sku, quantity) = raw
        .rsplit_once(':')
        .ok_or_else(|| "expected SKU:QTY, e.g. sku-widget:2".to_owned())?;
    let quantity: i64 = quantity
        .parse()
        .map_err(|_| "the quantity after the last ':' must be a whole number".to_owned())?;
    Ok(OrderItem {
        sku: sku.to_owned(),
        quantity,
    })
}

/// A saga state by name, in any case, with `-` or `_`, with or without the
/// `SAGA_STATE_` prefix.
pub fn parse_state(raw: &str) -> Result<i32, String> {
    let name = raw.trim().to_ascii_uppercase().replace('-', "_");
    let name = name.strip_prefix("SAGA_STATE_").unwrap_or(&name);
    match sagaflow_protos::orchestrator::v1::SagaState::from_str_name(&format!("SAGA_STATE_{name}"))
    {
        Some(s) if s as i32 != 0 => Ok(s as i32),
        _ => Err("one of running, compensating, completed, compensated, \
                  compensation_failed, suspended"
            .to_owned()),
    }
}

fn parse_seconds(raw: &str) -> Result<Duration, String> {
    raw.parse::<u64>()
        .ok()
        .filter(|s| (1..=86_400).contains(s))
        .map(Duration::from_secs)
        .ok_or_else(|| "a whole number of seconds, 1..86400".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn items_split_on_the_last_colon() {
        let item = parse_item("ns:sku-1:3").unwrap();
        assert_eq!((item.sku.as_str(), item.quantity), ("ns:sku-1", 3));
        assert!(parse_item("sku-widget").is_err());
        assert!(parse_item("sku-widget:two").is_err());
    }

    #[test]
    fn states_parse_in_any_spelling() {
        for raw in [
            "compensation_failed",
            "COMPENSATION-FAILED",
            "SAGA_STATE_COMPENSATION_FAILED",
        ] {
            assert_eq!(parse_state(raw), Ok(5), "{raw}");
        }
        assert!(parse_state("unspecified").is_err());
        assert!(parse_state("done").is_err());
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        for code in [
            "COMPENSATED",
            "COMPENSATION_FAILED",
            "SUSPENDED",
            "SAGAFLOW_API_URL",
        ] {
            assert!(help.contains(code), "{code}: {help}");
        }
    }

    #[test]
    fn redrive_needs_all_or_ids_not_both() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["sagaflow"], args].concat());
        assert!(parse(&["dead-letters", "redrive"]).is_err());
        assert!(parse(&["dead-letters", "redrive", "--all", "3"]).is_err());
        assert!(parse(&["dead-letters", "redrive", "--all"]).is_ok());
        assert!(parse(&["dead-letters", "redrive", "3", "4"]).is_ok());
    }
}
