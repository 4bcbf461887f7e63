//! What can go wrong, as the user reads it. Every error exits 1.

use std::error::Error as _;
use std::fmt;

use tonic::{Code, Status};

#[derive(Debug)]
pub enum Error {
    /// No connection to the orchestrator (refused, timed out, TLS failed,
    /// dropped).
    Unreachable { url: String, cause: String },
    /// The orchestrator answered with a refusal: shown as `CODE: message`.
    Refused(Status),
    /// Bad input or settings, or anything else.
    Other(anyhow::Error),
    /// Writing the output failed (a closed pipe: nobody reads any more).
    Output(std::io::Error),
}

impl Error {
    /// A failed call to `url`: a refusal, or (when the status comes from the
    /// client's own transport) the connection failing.
    pub fn from_status(url: &str, status: Status) -> Error {
        if is_transport(&status) {
            Error::Unreachable {
                url: url.to_owned(),
                cause: chain(&status),
            }
        } else {
            Error::Refused(status)
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable { url, cause } => {
                write!(f, "cannot reach the orchestrator at {url}: {cause}")
            }
            Error::Refused(s) => write!(f, "{}: {}", code_name(s.code()), s.message()),
            Error::Other(e) => write!(f, "{e:#}"),
            Error::Output(e) => write!(f, "writing the output: {e}"),
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::Other(e)
    }
}

/// Whether a status was made by the client's transport (connection refused,
/// reset, a broken HTTP/2 stream) rather than sent by the server: only those
/// carry a source error.
pub fn is_transport(status: &Status) -> bool {
    status.source().is_some()
        && matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        )
}

/// An error and its causes, `a: b: c`, without repeats (transport errors
/// often wrap the same message twice).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// The gRPC name of a status code, as in the proto and docs/api.md.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_code_then_message() {
        let e = Error::from_status(
            "https://x:1",
            Status::invalid_argument("items[0].sku: unknown item \"x\""),
        );
        assert_eq!(
            e.to_string(),
            "INVALID_ARGUMENT: items[0].sku: unknown item \"x\""
        );
    }

    #[test]
    fn a_server_unavailable_is_a_refusal_not_unreachable() {
        let e = Error::from_status("https://x:1", Status::unavailable("database down"));
        assert_eq!(e.to_string(), "UNAVAILABLE: database down");
    }

    #[test]
    fn a_transport_failure_says_where_it_could_not_reach() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = Status::from_error(Box::new(io));
        let e = Error::from_status("https://127.0.0.1:1", status);
        assert!(
            e.to_string()
                .starts_with("cannot reach the orchestrator at https://127.0.0.1:1: "),
            "{e}"
        );
    }
}
