//! The crate's one error type, and the one place it becomes a `tonic::Status`.
//!
//! Three kinds, because the orchestrator treats them differently:
//! - an invalid command (`INVALID_ARGUMENT`, naming the field): a bug in the
//!   caller; retrying the same command cannot help and nothing was written;
//! - a database failure (`UNAVAILABLE`): transient; the orchestrator retries
//!   with the same command id and nothing was committed;
//! - anything else (`INTERNAL`): a bug here, logged with its cause chain.
//!
//! A business refusal is NOT an error: it is a committed outcome event.

use std::error::Error as StdError;
use std::fmt::Write as _;

/// Why a command could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` names the offending field.
    #[error("{field}: {problem}")]
    InvalidArgument { field: String, problem: String },
    /// A statement or commit failed.
    #[error("database error")]
    Database(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool.
    #[error("database unavailable")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A broken invariant (e.g. a stored event that does not decode).
    #[error("internal error")]
    Unexpected(#[from] anyhow::Error),
}

impl Error {
    /// An invalid-argument error for `field`.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The message with every underlying cause, for logs and status details.
    pub fn describe(&self) -> String {
        let mut out = self.to_string();
        let mut source = match self {
            Error::Unexpected(e) => Some(e.as_ref() as &(dyn StdError + 'static)),
            _ => self.source(),
        };
        while let Some(cause) = source {
            let _ = write!(out, ": {cause}");
            source = cause.source();
        }
        out
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::InvalidArgument { .. } => {
                tracing::info!(error = %e, "invalid command");
                tonic::Status::invalid_argument(e.to_string())
            }
            Error::Database(_) | Error::Pool(_) => {
                let detail = e.describe();
                tracing::warn!(error = %detail, "transient failure");
                tonic::Status::unavailable(detail)
            }
            Error::Unexpected(_) => {
                let detail = e.describe();
                tracing::error!(error = %detail, "unexpected failure");
                tonic::Status::internal(detail)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status = tonic::Status::from(Error::invalid("command_id", "not a UUID"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "command_id: not a UUID");
    }

    #[test]
    fn unexpected_errors_keep_their_cause_chain() {
        let inner = anyhow::anyhow!("root cause").context("decoding stored event");
        let status = tonic::Status::from(Error::Unexpected(inner));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(
            status.message(),
            "internal error: decoding stored event: root cause"
        );
    }
}
