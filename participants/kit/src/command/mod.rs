//! The contract every step RPC shares.
//!
//! A service describes each RPC with an [`Rpc`] and hands the request and a
//! *decision* function to [`Executor::handle`]. The executor:
//!
//! 1. parses and validates the `StepCommand` ([`Command::parse`]); an invalid
//!    command is answered `INVALID_ARGUMENT` and nothing is written;
//! 2. opens one transaction and claims the command id in the `inbox`. A repeat
//!    (the row already exists; a concurrent repeat waits for the first's
//!    commit) re-inserts the stored event into the outbox with the same
//!    `event_id` and answers `STATUS_DUPLICATE` with the stored outcome;
//! 3. otherwise runs the decision (the business change, or a refusal), builds
//!    the [`EventEnvelope`](sagaflow_protos::events::v1::EventEnvelope),
//!    stores it in the inbox row, inserts it into the outbox, commits and
//!    answers `STATUS_ACCEPTED`.
//!
//! Any database error rolls everything back and becomes `UNAVAILABLE`.

mod envelope;
mod executor;
mod inbox;
mod parse;

use futures::future::BoxFuture;
use serde_json::Value;

pub use envelope::{event_type, kind_name, outcome_name};
pub use executor::Executor;
pub use inbox::MIGRATION as INBOX_MIGRATION;
pub use parse::{Command, MAX_KEY_LEN, key};
pub use sagaflow_protos::events::v1::{CommandKind, Outcome};

/// A participant's transaction, with its prepared-statement cache.
pub type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// What a decision function returns: it runs inside the command's
/// transaction and must not commit it.
pub type DecisionFuture<'t> = BoxFuture<'t, Result<Decision, crate::Error>>;

/// Static description of one step RPC.
#[derive(Debug, Clone, Copy)]
pub struct Rpc {
    /// The gRPC method name, for spans, logs and metrics ("CreateOrder").
    pub method: &'static str,
    /// Whether the RPC does a step or undoes one.
    pub kind: CommandKind,
}

impl Rpc {
    /// An action RPC.
    pub const fn action(method: &'static str) -> Self {
        Self {
            method,
            kind: CommandKind::Action,
        }
    }

    /// A compensation RPC.
    pub const fn compensation(method: &'static str) -> Self {
        Self {
            method,
            kind: CommandKind::Compensation,
        }
    }
}

/// The participant's answer to a command, before it becomes an event.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct Decision {
    /// Succeeded or refused.
    pub outcome: Outcome,
    /// Empty on success; a refusal code (optionally `code: detail`) otherwise.
    pub reason: String,
    /// A small JSON object describing what was done, kept in saga history.
    pub payload: Value,
    /// What a successful action hands to later steps and to its own
    /// compensation (a payment id, a booking reference): a JSON object of
    /// at most [`MAX_OUTPUT_BYTES`](sagaflow_common::output::MAX_OUTPUT_BYTES)
    /// bytes. A larger one is refused before anything is committed.
    pub output: Option<Value>,
}

impl Decision {
    /// The step was done; `payload` describes what was done (saga
    /// history shows it).
    pub fn succeeded(payload: Value) -> Self {
        Self {
            outcome: Outcome::Succeeded,
            reason: String::new(),
            payload,
            output: None,
        }
    }

    /// This decision with `output` (see [`Decision::output`]).
    pub fn with_output(self, output: Value) -> Self {
        Self {
            output: Some(output),
            ..self
        }
    }

    /// The step was refused: a business decision, final for this command.
    /// `reason` is a stable code, optionally followed by `: detail`
    /// (`no_seats: LH-400`).
    pub fn refused(reason: impl Into<String>, payload: Value) -> Self {
        Self {
            outcome: Outcome::Refused,
            reason: reason.into(),
            payload,
            output: None,
        }
    }
}

/// The reason for an action that arrives after its compensation.
pub const COMPENSATED_BEFORE_ACTION: &str = "compensated_before_action";
