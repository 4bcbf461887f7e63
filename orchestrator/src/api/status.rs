//! The one place orchestrator errors become gRPC statuses.
//!
//! - storage that cannot be reached: `UNAVAILABLE` (retry later); the cause
//!   is logged in full;
//! - a stored row this build cannot make sense of: `INTERNAL`;
//! - an operator action the saga's state does not allow, or a saga this
//!   instance cannot act on: `FAILED_PRECONDITION`, `saga_id: <why>`.

use tonic::Status;

use crate::saga;
use crate::store;

impl From<store::Error> for Status {
    fn from(e: store::Error) -> Status {
        match &e {
            store::Error::Db(_) | store::Error::Pool(_) => {
                tracing::warn!(error = %e, "storage unavailable");
                Status::unavailable("orchestrator storage unavailable; retry later")
            }
            store::Error::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt saga");
                Status::internal(e.to_string())
            }
            store::Error::UnknownDefinition { .. } => {
                Status::failed_precondition(format!("saga_id: {e}; ask an instance that has it"))
            }
        }
    }
}

/// A storage failure reported as an `anyhow` chain (the dead-letter
/// module's): `UNAVAILABLE`, the cause logged in full.
pub fn storage(e: impl std::fmt::Display) -> Status {
    tracing::warn!(error = %e, "storage unavailable");
    Status::unavailable("orchestrator storage unavailable; retry later")
}

/// Why the state machine refused an operator action, as a status.
pub fn refused(e: saga::Error) -> Status {
    match e {
        saga::Error::NotRetryable { status } => Status::failed_precondition(format!(
            "saga_id: saga is {}; only COMPENSATION_FAILED and SUSPENDED sagas can be retried",
            status.as_str()
        )),
        saga::Error::NotCancellable { status } => Status::failed_precondition(format!(
            "saga_id: saga is {}; only RUNNING and SUSPENDED sagas can be cancelled",
            status.as_str()
        )),
        saga::Error::PastPivot { name, .. } => Status::failed_precondition(format!(
            "saga_id: saga is past its pivot: {name} may have acted and cannot be undone"
        )),
        e @ (saga::Error::ShapeMismatch { .. } | saga::Error::CursorOutOfRange { .. }) => {
            Status::failed_precondition(format!(
                "saga_id: its stored state does not fit its definition ({e}); repair it first"
            ))
        }
        e @ (saga::Error::UnknownStep { .. }
        | saga::Error::NeverSent { .. }
        | saga::Error::Contradiction { .. }
        | saga::Error::Suspended { .. }) => {
            tracing::error!(error = %e, "operator action on a saga the engine cannot apply");
            Status::internal(format!("saga_id: {e}"))
        }
    }
}

/// A saga whose stored state cannot be read.
pub fn unreadable(reason: &str) -> Status {
    Status::failed_precondition(format!(
        "saga_id: [SF1009] the saga's stored state cannot be read ({}); repair it, then retry",
        super::input::preview(reason)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::Status as S;

    #[test]
    fn refusals_of_the_machine_are_failed_preconditions() {
        let cases = [
            (
                saga::Error::NotRetryable { status: S::Running },
                "saga_id: saga is RUNNING; only COMPENSATION_FAILED and SUSPENDED sagas can be retried",
            ),
            (
                saga::Error::NotCancellable {
                    status: S::Completed,
                },
                "saga_id: saga is COMPLETED; only RUNNING and SUSPENDED sagas can be cancelled",
            ),
            (
                saga::Error::PastPivot {
                    step: 3,
                    name: "approve_order".into(),
                },
                "saga_id: saga is past its pivot: approve_order may have acted and cannot be undone",
            ),
        ];
        for (e, message) in cases {
            let status = refused(e);
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn a_corrupt_row_is_internal_and_a_database_outage_unavailable() {
        let corrupt = store::Error::Corrupt {
            saga_id: uuid::Uuid::nil(),
            reason: "bad".into(),
        };
        assert_eq!(Status::from(corrupt).code(), tonic::Code::Internal);
    }
}
